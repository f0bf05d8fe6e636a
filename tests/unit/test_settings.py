"""Settings from STREAMREC_* variables: defaults, overrides, helpful refusals."""

from __future__ import annotations

import os

import pytest

from config.settings import (
    ENV_PREFIX,
    ConfigError,
    Settings,
    load_settings,
    redact_url,
)
from models.mf import MFConfig


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the defaults, whatever the shell exported."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return str(caught.value)


def test_defaults_load_and_match_the_model_defaults():
    settings = load_settings()

    assert isinstance(settings, Settings)
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.top_k == 20
    assert settings.exclude_viewed is False
    model = MFConfig()
    assert settings.n_factors == model.n_factors
    assert settings.learning_rate == model.learning_rate
    assert settings.regularization == model.regularization
    assert settings.n_negatives == model.n_negatives
    assert settings.min_history == model.min_history
    assert settings.recent_items == model.recent_items
    assert settings.dedup_window_s * 1000 == model.dedup_window_ms
    assert settings.event_weights == dict(model.event_weights)


def test_environment_variables_override_the_defaults(monkeypatch):
    monkeypatch.setenv("STREAMREC_TOP_K", "7")
    monkeypatch.setenv("STREAMREC_LEARNING_RATE", "0.2")
    monkeypatch.setenv("STREAMREC_EXCLUDE_VIEWED", "true")
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "k1:9092,k2:9093")
    monkeypatch.setenv("STREAMREC_REDIS_URL", "rediss://:pw@cache:6380/2")
    monkeypatch.setenv("STREAMREC_WEIGHT_PURCHASE", "9")

    settings = load_settings()

    assert settings.top_k == 7
    assert settings.learning_rate == 0.2
    assert settings.exclude_viewed is True
    assert settings.kafka_bootstrap == "k1:9092,k2:9093"
    assert settings.redis_url == "rediss://:pw@cache:6380/2"
    assert settings.event_weights["purchase"] == 9.0


def test_variable_names_are_not_case_sensitive(monkeypatch):
    monkeypatch.setenv("streamrec_top_k", "3")

    assert load_settings().top_k == 3


def test_keyword_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("STREAMREC_WEB_PORT", "7000")

    assert load_settings(web_port=7001).web_port == 7001


def test_settings_are_frozen():
    settings = load_settings()

    with pytest.raises(ValueError):
        settings.top_k = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAMREC_TOP_K", "0"),
        ("STREAMREC_TOP_K", "many"),
        ("STREAMREC_N_FACTORS", "2000"),
        ("STREAMREC_LEARNING_RATE", "-0.1"),
        ("STREAMREC_EXCLUDE_VIEWED", "maybe"),
        ("STREAMREC_WEB_PORT", "70000"),
        ("STREAMREC_KAFKA_BOOTSTRAP", "localhost"),
        ("STREAMREC_REDIS_URL", "http://127.0.0.1:6379/0"),
    ],
)
def test_an_invalid_value_names_the_variable_and_how_to_fix_it(
    monkeypatch, name, value
):
    message = config_error(monkeypatch, **{name: value})

    assert f"{name}:" in message
    assert repr(value) in message
    assert "fix the environment variables" in message


def test_every_invalid_variable_is_listed_at_once(monkeypatch):
    message = config_error(
        monkeypatch, STREAMREC_TOP_K="0", STREAMREC_PARTITIONS="zero"
    )

    assert "STREAMREC_TOP_K:" in message
    assert "STREAMREC_PARTITIONS:" in message


def test_bad_addresses_suggest_the_local_default(monkeypatch):
    kafka = config_error(monkeypatch, STREAMREC_KAFKA_BOOTSTRAP="broker")
    monkeypatch.delenv("STREAMREC_KAFKA_BOOTSTRAP")
    redis = config_error(monkeypatch, STREAMREC_REDIS_URL="tcp://cache:6379")

    assert "127.0.0.1:9092" in kafka
    assert "redis://127.0.0.1:6379/0" in redis


def test_clashing_topic_names_name_a_topic_variable(monkeypatch):
    message = config_error(monkeypatch, STREAMREC_DEAD_LETTER_TOPIC="events")

    assert "topic names must differ" in message
    assert "STREAMREC_DEAD_LETTER_TOPIC" in message or (
        "STREAMREC_EVENTS_TOPIC" in message
    )


def test_event_weights_out_of_rank_are_a_config_error(monkeypatch):
    message = config_error(monkeypatch, STREAMREC_WEIGHT_VIEW="10")

    assert "STREAMREC_WEIGHT_VIEW" in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://admin:secret@host:6379/0", "redis://admin:***@host:6379/0"),
        ("rediss://admin:p%40ss@host/1", "rediss://admin:***@host/1"),
        ("redis://admin:a@b@host:6379", "redis://admin:***@host:6379"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://admin@host:6379/0", "redis://admin@host:6379/0"),
    ],
)
def test_redact_url_hides_the_password_and_keeps_the_rest(url, expected):
    assert redact_url(url) == expected


def test_the_redacted_redis_url_of_the_settings_hides_the_password(monkeypatch):
    monkeypatch.setenv("STREAMREC_REDIS_URL", "redis://:secret@cache:6379/0")

    settings = load_settings()

    assert settings.redis_url == "redis://:secret@cache:6379/0"
    assert "secret" not in settings.redis_url_redacted
    assert "cache:6379/0" in settings.redis_url_redacted


def test_a_bad_redis_url_error_does_not_reveal_the_password(monkeypatch):
    message = config_error(
        monkeypatch, STREAMREC_REDIS_URL="http://:secret@cache:6379/0"
    )

    assert "STREAMREC_REDIS_URL" in message
    assert "secret" not in message
