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
# HTTP answers: the API's target is p99 <= 5 ms
_HTTP_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
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
        self.redis_waiting = Gauge(
            "streamrec_redis_waiting",
            "1 while the learner holds a batch back because Redis refuses its writes",
            registry=r,
        )
        self.shoppers_forgotten = Counter(
            "streamrec_shoppers_forgotten",
            "Shoppers removed on a forget command (state, list and tombstones)",
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
        self._add_serving_metrics(r)
        self._add_quality_metrics(r)
        for event_type in EVENT_TYPES:
            self.events_consumed.labels(event_type)
        for reason in REASONS:
            self.events_invalid.labels(reason)
        for kind in ("personal", "popular"):
            self.lists_published.labels(kind)
        for side in ("user", "item"):
            self.nonfinite.labels(side)

    def _add_serving_metrics(self, r: CollectorRegistry) -> None:
        """The HTTP API, the trending list and consumer lag (issue 5)."""
        self.http_requests = Counter(
            "streamrec_http_requests",
            "HTTP API requests answered, by route and status code",
            ["route", "code"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "streamrec_http_request_seconds",
            "Time to answer one HTTP API request, by route",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.trending_updates = Counter(
            "streamrec_trending_updates",
            "Item counts added to the windowed trending table",
            registry=r,
        )
        self.trending_publish_seconds = Histogram(
            "streamrec_trending_publish_seconds",
            "Time to score this worker's trending items and publish the list",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.trending_items = Gauge(
            "streamrec_trending_items",
            "Items with events in the trending window, in this worker's partitions",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamrec_consumer_lag_messages",
            "Messages of this worker's partitions not yet committed, by input",
            ["source"],
            registry=r,
        )
        for source in ("events", "item_updates"):
            self.consumer_lag.labels(source)

    def _add_quality_metrics(self, r: CollectorRegistry) -> None:
        """Live quality of the lists shown (issue 3; models/live_quality.py)."""
        self.live_hit_rate = Gauge(
            "streamrec_live_hit_rate_20",
            "HR@20 of the lists shoppers were last shown, over the last 10,000 "
            "test events (first meetings of a shopper and an item)",
            registry=r,
        )
        self.live_tests = Counter(
            "streamrec_live_tests",
            "Test events checked against the list their shopper was last shown",
            registry=r,
        )
        self.live_hits = Counter(
            "streamrec_live_hits",
            "Test events whose item was in the first 20 places of that list",
            registry=r,
        )
        self.live_untested = Counter(
            "streamrec_live_untested",
            "Test events of shoppers this worker has shown no list yet",
            registry=r,
        )
