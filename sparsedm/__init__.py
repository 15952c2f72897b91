"""sparsedm: sparse-to-sparse training of diffusion models.

Oliveira, Mocanu & Leiva, "Sparse-to-Sparse Training of Diffusion Models", TMLR 2025 (arXiv 2504.21380).
The sparse engine (`sparsedm.sparse`) is independent of diffusion and works with any PyTorch loop.
"""

__version__ = "0.1.0"
