"""Benchmarks of the streamrec pipeline against a running Kafka and Redis.

``python -m benchmarks.pipeline --help`` measures end-to-end throughput and
list freshness; :mod:`benchmarks.common` holds what benchmarks share (service
checks, worker processes, metrics scraping, a bare Faust counting agent).
"""
