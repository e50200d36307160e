"""Tests of include/local: the embedded run's helpers and the local Celery stack."""
