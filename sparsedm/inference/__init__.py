"""Using a trained run: load its sparse EMA weights, draw samples (sampling), write a diffusers folder (export)."""
