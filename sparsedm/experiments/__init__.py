"""The paper's experiments: evaluate a run (FID of its sparse EMA weights), sweep a grid of methods x S x p x
seeds, aggregate it into the paper's table and plots, and the README's demo.

Layout: run_images (a run's samples as FID sees them), evaluate, grid, sweep, parallel (runs side by side),
aggregate, plots, report, demo.
"""
