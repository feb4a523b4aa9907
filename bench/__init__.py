"""Benchmarks of Pipers against bare loops and peer queues (see docs/bench.md)."""
