"""ecdp-bench: a reproducibility suite for ECDP (Yuan & Yuan, AAAI 2024).

Equation numbers in docstrings refer to the paper text in ``shared/paper/ECDP.md``.
"""

__version__ = "0.1.0"
