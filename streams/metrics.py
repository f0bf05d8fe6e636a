"""Every Prometheus metric the worker exports, defined in one place.

Metrics live on a registry passed in, so that a test can use a fresh one.
Latencies are in seconds; ``_total`` only on counters; no label carries a
user or item id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from models.events import EVENT_TYPES, REASONS

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class WorkerMetrics:
    """The worker's counters, histograms and gauges."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "streamrec_events_consumed",
            "Valid events taken from the events topic, by event type",
            ["event_type"],
            registry=r,
        )
        self.events_invalid = Counter(
            "streamrec_events_invalid",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "streamrec_events_duplicate",
            "Events skipped because their event_id was already learned",
            registry=r,
        )
        self.batch_size = Histogram(
            "streamrec_batch_size_events",
            "Events per micro-batch taken from the events topic",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.update_seconds = Histogram(
            "streamrec_update_seconds",
            "Time to learn one micro-batch (decode excluded)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.topk_seconds = Histogram(
            "streamrec_topk_seconds",
            "Time to score and rank the lists of one micro-batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_seconds = Histogram(
            "streamrec_publish_seconds",
            "Time to write one micro-batch's lists to Redis and flush its Kafka output",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.freshness_seconds = Histogram(
            "streamrec_freshness_seconds",
            "From the causing event reaching Kafka to its list written to Redis",
            buckets=_FRESHNESS_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "streamrec_redis_errors",
            "Failed Redis writes (each retry counts)",
            registry=r,
        )
        self.lists_published = Counter(
            "streamrec_lists_published",
            "Top-K lists written to Redis and the recommendations topic",
            ["kind"],
            registry=r,
        )
        self.item_updates = Counter(
            "streamrec_item_updates_applied",
            "Item factor updates applied by this worker as the item's owner",
            registry=r,
        )
        self.nonfinite = Counter(
            "streamrec_nonfinite_updates",
            "Updates refused because they would make factors NaN or infinite",
            ["side"],
            registry=r,
        )
        self.users_known = Gauge(
            "streamrec_users_known",
            "Shoppers with state in this worker's partitions",
            registry=r,
        )
        self.items_known = Gauge(
            "streamrec_items_known",
            "Items in this worker's replica of the item factors",
            registry=r,
        )
        self.replica_updates = Counter(
            "streamrec_replica_updates",
            "Item factor records read into this worker's replica",
            registry=r,
        )
        for event_type in EVENT_TYPES:
            self.events_consumed.labels(event_type)
        for reason in REASONS:
            self.events_invalid.labels(reason)
        for kind in ("personal", "popular"):
            self.lists_published.labels(kind)
        for side in ("user", "item"):
            self.nonfinite.labels(side)
