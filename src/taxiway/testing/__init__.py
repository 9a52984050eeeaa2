"""Small real servers used by the demo, the tests and the benchmarks."""
