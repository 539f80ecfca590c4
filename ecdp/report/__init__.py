"""Reporting: the paper's tables beside ours (:mod:`.tables`), seaborn figures
(:mod:`.figures`), the statistics (:mod:`.claims`) and the ``ecdp report`` command
(:mod:`.cli`); ``benchmarks`` turns a pytest-benchmark JSON into tables.  The grid of a
workflow config (which cells exist) is read from :mod:`ecdp.grid`, the workflow layer
below; nothing there imports this package."""
