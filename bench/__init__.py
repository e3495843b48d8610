"""Benchmarks (`make bench`): each bench/*_bench.py has a run() that prints its
figures as ratios to a physical floor or to a peer measured in the same run.
They never gate CI on absolute times."""
