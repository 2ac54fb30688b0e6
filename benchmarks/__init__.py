"""mmpo's benchmark suite: ``python -m benchmarks CASE ...`` (``bash benchmarks/run.sh CASE ...`` builds the
benchmark environment with TRL first). The method is in ``benchmarks/README.md``."""
