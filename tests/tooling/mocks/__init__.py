"""Tests of include/mocks: the mock ESP's own behaviour."""
