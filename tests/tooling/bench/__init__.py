"""Tests of include/bench: the bench's figures and its baselines."""
