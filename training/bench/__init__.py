"""Benchmarks that compare sculpt with diffusers' own tools on identical parts and data (run from a checkout:
`scripts/bench_vs_diffusers.py`, `scripts/bench_gpu.sh`). Not installed with the package: they need diffusers'
example training script, which is not on PyPI, beside the checkout."""
