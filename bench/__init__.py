"""The benchmark of shared/docs/bench.md: ``python -m bench`` (``--quick`` for a short run)."""
