"""The sparse engine in training loops that other libraries run: Accelerate (accelerate.py) and PyTorch
Lightning (lightning.py). Each is a few calls around the engine's two per-step calls; neither library is
imported until its module is (pip install sparsedm[accelerate] or sparsedm[lightning])."""
