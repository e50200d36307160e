"""``python -m include.bench`` (``make bench``): the benchmark in include/bench/run.py."""

from include.bench.run import main

main()
