"""Security settings reach every client, and secrets never reach a message."""

from __future__ import annotations

import logging
import ssl

import pytest
from faust.auth import SASLCredentials, SSLCredentials

from config.security import (
    faust_broker_credentials,
    kafka_client_options,
    redis_options,
    redis_url,
)
from config.settings import ConfigError, load_settings

SECRET = "s3cr3t-Pa55"


def test_plaintext_by_default() -> None:
    settings = load_settings()
    assert kafka_client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(settings) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_reaches_aiokafka_and_faust(mechanism: str) -> None:
    settings = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="shop",
        kafka_sasl_password=SECRET,
    )
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "shop"
    assert options["sasl_plain_password"] == SECRET
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_broker_credentials(settings)
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == mechanism
    assert credentials.password == SECRET


def test_sasl_without_tls_and_tls_alone() -> None:
    sasl = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET,
    )
    assert "ssl_context" not in kafka_client_options(sasl)
    assert faust_broker_credentials(sasl).protocol.value == "SASL_PLAINTEXT"
    tls = load_settings(kafka_security_protocol="SSL")
    assert isinstance(kafka_client_options(tls)["ssl_context"], ssl.SSLContext)
    assert isinstance(faust_broker_credentials(tls), SSLCredentials)


def test_sasl_needs_a_user_and_a_password() -> None:
    with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME"):
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password=SECRET)


def test_missing_certificate_files_are_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="KAFKA_SSL_CAFILE"):
        load_settings(kafka_ssl_cafile=str(tmp_path / "nope.pem"))


def test_redis_password_and_tls_override_the_url() -> None:
    settings = load_settings(
        redis_url="redis://:old@cache:6380/2", redis_password=SECRET, redis_tls=True
    )
    assert redis_url(settings) == "rediss://cache:6380/2"
    options = redis_options(settings)
    assert options["password"] == SECRET
    assert options["socket_timeout"] > 0


def test_secrets_stay_out_of_reprs_errors_and_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        redis_url=f"redis://:{SECRET}@cache:6379/0",
        redis_password=SECRET,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET,
    )
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert SECRET not in settings.redis_url_redacted
    logging.getLogger("test").info("settings: %s %r", settings, settings)
    assert SECRET not in caplog.text
    monkeypatch.setenv("STREAMREC_REDIS_URL", f"http://:{SECRET}@cache")
    monkeypatch.setenv("STREAMREC_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("STREAMREC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert SECRET not in str(error.value)
    assert "STREAMREC_REDIS_URL" in str(error.value)
