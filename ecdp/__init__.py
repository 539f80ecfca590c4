"""ecdp-bench: a reproducibility suite for ECDP (Yuan & Yuan, AAAI 2024).

Equation numbers in docstrings are the paper's (Yuan & Yuan, AAAI 2024); the design is
``docs/ARCHITECTURE.md``.
"""

__version__ = "0.1.0"
