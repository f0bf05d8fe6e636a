"""Typed settings, read from ``STREAMREC_*`` environment variables.

Every field has a default that works with ``scripts/services.sh`` on one
machine; the README's configuration table lists them. Settings are
checked once, at start, and a bad value stops the process with a message that
names the variable, the value and what would be accepted.
"""

from __future__ import annotations

import itertools
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "STREAMREC_"


class ConfigError(ValueError):
    """Settings that cannot work; the message says which variable and how to fix it."""


class Settings(BaseSettings):
    """All knobs of the worker, the producers and the replay."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    # --- services -----------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    # repr=False: a URL may carry a password, and settings get printed
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL", repr=False
    )
    app_id: str = Field(
        "streamrec", description="Faust app id: consumer group and table prefix"
    )
    data_dir: str = Field(".run/worker", description="Folder for the worker's state")
    web_port: int = Field(6066, ge=1, le=65535, description="Port of /metrics")
    web_bind: str = Field(
        "127.0.0.1", description="Address /metrics listens on (0.0.0.0 in containers)"
    )
    web_in_thread: bool = Field(
        False,
        description="Serve the API and /metrics from a thread of their own "
        "(slower while learning: docs/BENCHMARKS.md, API)",
    )

    # --- security (secrets are SecretStr: printed as '**********') ---------
    kafka_security_protocol: Literal[
        "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"
    ] = Field("PLAINTEXT", description="How clients talk to the brokers")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism for SASL_* protocols"
    )
    kafka_sasl_username: str = Field("", description="SASL user name")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password")
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle to verify the brokers (default: system CAs)"
    )
    kafka_ssl_certfile: str | None = Field(
        None, description="Client certificate for mutual TLS"
    )
    kafka_ssl_keyfile: str | None = Field(
        None, description="Private key of the client certificate"
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of the private key"
    )
    redis_username: str | None = Field(
        None, description="Redis ACL user (overrides the URL's)"
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password (overrides the URL's)"
    )
    redis_tls: bool = Field(False, description="TLS to Redis (as rediss:// does)")
    redis_tls_cafile: str | None = Field(
        None, description="CA bundle to verify Redis (default: system CAs)"
    )

    # --- topics -------------------------------------------------------------
    events_topic: str = Field("events", description="Input topic of shop events")
    recommendations_topic: str = Field(
        "recommendations", description="Output topic of top-K lists"
    )
    dead_letter_topic: str = Field(
        "events-dead-letter", description="Invalid events with their reason"
    )
    item_updates_topic: str = Field(
        "item-updates", description="Item gradients routed to each item's owner"
    )
    control_topic: str = Field(
        "streamrec-control", description="Commands such as forget, keyed by user"
    )
    partitions: int = Field(8, ge=1, le=1024, description="Partitions of every topic")

    # --- lists --------------------------------------------------------------
    top_k: int = Field(20, ge=1, le=1000, description="Length of a shopper's list")
    min_history: int = Field(
        1, ge=0, description="Events before a shopper gets personal (not popular) lists"
    )
    exclude_viewed: bool = Field(
        False, description="Also hide items the shopper only viewed"
    )
    list_ttl_s: int = Field(
        7 * 24 * 3600, ge=1, description="Lifetime of a list in Redis"
    )
    key_prefix: str = Field("rec:", description="Redis key prefix of lists")

    # --- trending and serving -----------------------------------------------
    trending_bucket_s: int = Field(
        60, ge=1, le=86_400, description="Width of one trending count bucket"
    )
    trending_window_s: int = Field(
        900, ge=1, le=7 * 86_400, description="Sliding window of trending items"
    )
    trending_half_life_s: float = Field(
        300.0, gt=0, le=7 * 86_400, description="Age at which an event weighs half"
    )
    trending_interval_s: float = Field(
        2.0, ge=0.1, le=300, description="How often the trending list is published"
    )
    trending_size: int = Field(
        100, ge=1, le=1000, description="Items kept in the trending list"
    )
    lag_interval_s: float = Field(
        5.0, ge=0.5, le=300, description="How often consumer lag is measured"
    )

    # --- learning -----------------------------------------------------------
    n_factors: int = Field(16, ge=1, le=1024, description="Latent factors")
    learning_rate: float = Field(0.05, gt=0, le=10, description="SGD step size")
    regularization: float = Field(0.01, ge=0, le=10, description="L2 penalty")
    n_negatives: int = Field(4, ge=0, le=100, description="Sampled negatives/event")
    negative_pool: int = Field(
        128, ge=1, le=100_000, description="Negatives drawn per batch, shared"
    )
    grad_clip: float = Field(1.0, gt=0, description="Max norm of one gradient")
    batch_clip: float = Field(
        4.0, gt=0, description="Max norm of an item's summed step, in grad_clips"
    )
    init_scale: float = Field(0.1, gt=0, le=1, description="Std of new factors")
    weight_view: float = Field(1.0, ge=0, description="Weight of a view")
    weight_click: float = Field(1.5, ge=0, description="Weight of a click")
    weight_add_to_cart: float = Field(3.0, ge=0, description="Weight of add_to_cart")
    weight_purchase: float = Field(5.0, ge=0, description="Weight of a purchase")
    seed: int = Field(42, description="Seed of every random choice")
    # chosen on the first half of each stream (docs/BENCHMARKS.md, issue #3)
    item_bias: bool = Field(True, description="Learn and score an item bias")
    adagrad: bool = Field(True, description="Per-row Adagrad step sizes")
    popular_negatives: float = Field(
        0.5, ge=0, le=1, description="Share of negatives drawn from recent positives"
    )
    negative_memory: int = Field(
        4096, ge=1, le=1_000_000, description="Recent positives kept for negatives"
    )
    seq_weight: float = Field(
        1.0, ge=0, le=1000, description="Weight of the item-to-item links (0: off)"
    )
    seq_steps: int = Field(
        10, ge=1, le=1000, description="Events after an item that link from it"
    )
    seq_sources: int = Field(
        10, ge=1, le=1000, description="Latest distinct items a list links from"
    )
    seq_recency: float = Field(
        0.85, gt=0, le=1, description="Weight of each older source, relative"
    )
    seq_backward: float = Field(
        0.75, ge=0, le=1, description="Weight of a link back to an earlier item"
    )
    link_cap: int = Field(
        300, ge=1, le=10_000, description="Links kept per item (strongest)"
    )
    pop_weight: float = Field(
        0.5, ge=0, le=1000, description="Weight of popularity for short histories"
    )
    pop_history: float = Field(
        10.0, gt=0, description="History length at which popularity weighs half"
    )
    candidate_popular: int = Field(
        200, ge=0, description="Popular items among a list's candidates (0: all)"
    )

    # --- hot path -----------------------------------------------------------
    batch_max: int = Field(1000, ge=1, le=100_000, description="Max events per batch")
    batch_within_s: float = Field(
        0.05, gt=0, le=10, description="Max wait to fill a batch"
    )
    fetch_max_wait_ms: int = Field(
        20, ge=1, le=1500, description="Longest the broker may hold a fetch"
    )
    session_timeout_s: float = Field(
        10.0,
        ge=6,
        le=300,
        description="Silence after which Kafka drops a worker from the group",
    )
    max_id_length: int = Field(128, ge=1, le=1024, description="Longest accepted id")
    max_future_s: int = Field(
        300, ge=0, description="How far ahead of the clock a timestamp may be"
    )
    dedup_window_s: int = Field(
        600, ge=0, description="How long an event_id is remembered per shopper"
    )
    recent_items: int = Field(
        20, ge=1, le=1000, description="Last items kept per shopper"
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(
                    f"expected host:port[,host:port], got {server!r}; "
                    "for the local broker use 127.0.0.1:9092"
                )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"expected a redis://, rediss:// or unix:// URL, got "
                f"{redact_url(value)!r}; for the local Redis use "
                "redis://127.0.0.1:6379/0"
            )
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        topics = {
            "EVENTS_TOPIC": self.events_topic,
            "RECOMMENDATIONS_TOPIC": self.recommendations_topic,
            "DEAD_LETTER_TOPIC": self.dead_letter_topic,
            "ITEM_UPDATES_TOPIC": self.item_updates_topic,
            "CONTROL_TOPIC": self.control_topic,
        }
        if len(set(topics.values())) != len(topics):
            named = ", ".join(f"{ENV_PREFIX}{k}={v}" for k, v in topics.items())
            raise ValueError(f"topic names must differ, got {named}")
        weights = [
            ("WEIGHT_PURCHASE", self.weight_purchase),
            ("WEIGHT_ADD_TO_CART", self.weight_add_to_cart),
            ("WEIGHT_CLICK", self.weight_click),
            ("WEIGHT_VIEW", self.weight_view),
        ]
        for (name, weight), (lower_name, lower) in itertools.pairwise(weights):
            if weight < lower:
                raise ValueError(
                    f"{ENV_PREFIX}{lower_name}={lower} is above "
                    f"{ENV_PREFIX}{name}={weight}; event weights must rank "
                    "purchase >= add_to_cart >= click >= view"
                )
        self._check_security()
        if self.seq_steps > self.recent_items:
            raise ValueError(
                f"{ENV_PREFIX}SEQ_STEPS={self.seq_steps} is above "
                f"{ENV_PREFIX}RECENT_ITEMS={self.recent_items}; links come from "
                "the remembered items, so raise RECENT_ITEMS or lower SEQ_STEPS"
            )
        return self

    def _check_security(self) -> None:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} needs "
                f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD"
            )
        files = {
            "KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
            "REDIS_TLS_CAFILE": self.redis_tls_cafile,
        }
        for name, path in files.items():
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{ENV_PREFIX}{name}={path} is not a readable file")
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SSL_KEYFILE needs {ENV_PREFIX}KAFKA_SSL_CERTFILE"
            )

    @model_validator(mode="after")
    def _check_trending(self) -> Settings:
        if self.trending_window_s < self.trending_bucket_s:
            raise ValueError(
                f"{ENV_PREFIX}TRENDING_WINDOW_S={self.trending_window_s} is shorter "
                f"than {ENV_PREFIX}TRENDING_BUCKET_S={self.trending_bucket_s}; "
                "the window must hold at least one bucket"
            )
        return self

    @property
    def trending_key(self) -> str:
        """Redis key of the trending list: one per app id (consumer group)."""
        return f"{self.app_id}:trending"

    @cached_property
    def event_weights(self) -> dict[str, float]:
        return {
            "view": self.weight_view,
            "click": self.weight_click,
            "add_to_cart": self.weight_add_to_cart,
            "purchase": self.weight_purchase,
        }

    @property
    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url)


def redact_url(url: str) -> str:
    """Hide the password of a URL so that it can be logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, or raise :class:`ConfigError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            if not error["loc"]:  # a check across several settings
                lines.append(f"  {error['msg']}")
                continue
            name = ENV_PREFIX + "_".join(str(p) for p in error["loc"]).upper()
            value = error.get("input")
            if isinstance(value, str) and "URL" in name:
                value = redact_url(value)
            if "PASSWORD" in name:
                value = "***"  # never echo a secret, not even a bad one
            lines.append(f"  {name}: {error['msg']} (got {value!r})")
        raise ConfigError(
            "invalid streamrec settings:\n"
            + "\n".join(lines)
            + "\nfix the environment variables above; see README.md#configuration"
        ) from None
