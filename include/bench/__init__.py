"""The benchmark (`python -m include.bench`), its two baselines without Airflow, and the load tools."""
