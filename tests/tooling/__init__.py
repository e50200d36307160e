"""Tests of the tooling in include/ (not of the product): they mirror its folders."""
