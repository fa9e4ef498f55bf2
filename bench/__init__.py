"""Benchmarks: ratios against a raw confluent-kafka loop measured in the same run."""
