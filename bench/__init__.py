"""``make bench``: the plugin's speed side by side with Certbot and the ACME protocol floor.

Run on demand, never in CI and never collected by pytest (``testpaths = ["tests"]``).
``python -m bench --help`` lists the scenarios; raw figures go to bench/results/latest.json
and docs/benchmarks.md holds the table.
"""
