"""Integer deployment of a finished run: ``qbench-export`` (:mod:`qbench.export.cli`)."""
