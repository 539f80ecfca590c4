"""Reporting: the experiment grid of a workflow config (:mod:`.grid`), the paper's
tables beside ours (:mod:`.tables`), seaborn figures (:mod:`.figures`) and the
``ecdp report`` command (:mod:`.cli`).  ``benchmarks`` turns a pytest-benchmark JSON
into tables."""
