"""Connection options for Kafka and Redis built from the typed settings.

One place turns ``STREAMREC_KAFKA_SECURITY_*``, ``STREAMREC_KAFKA_SASL_*``,
``STREAMREC_KAFKA_SSL_*`` and ``STREAMREC_REDIS_*`` into what each client
takes: keyword arguments for aiokafka's producers, consumers and admin client,
Faust's ``broker_credentials``, and a redis-py client. Secrets leave their
:class:`~pydantic.SecretStr` only here, on the way into a client, so they are
never part of a message, a log line or a repr.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from config.settings import Settings

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis
    from faust.types.auth import CredentialsT

# How long a Redis call may take before it counts as failed: without a
# timeout a Redis that hangs (rather than refuses) would stall a worker with
# no error to count.
REDIS_TIMEOUT_S = 5.0


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for the brokers, or None for a plaintext protocol."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_cafile
    )
    if settings.kafka_ssl_certfile:
        key_password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            settings.kafka_ssl_certfile,
            settings.kafka_ssl_keyfile,
            password=key_password.get_secret_value() if key_password else None,
        )
    return context


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def faust_broker_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the same settings (None: plaintext)."""
    import faust

    protocol = settings.kafka_security_protocol
    context = kafka_ssl_context(settings)
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=context,  # SASL_SSL when given, else SASL_PLAINTEXT
            mechanism=settings.kafka_sasl_mechanism,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return None


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url`` beside :func:`redis_url`."""
    options: dict[str, Any] = {
        "socket_timeout": REDIS_TIMEOUT_S,
        "socket_connect_timeout": REDIS_TIMEOUT_S,
    }
    if settings.redis_username is not None:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if settings.redis_tls_cafile is not None:
        options["ssl_ca_certs"] = settings.redis_tls_cafile
    return options


def redis_url(settings: Settings) -> str:
    """The URL a client connects to.

    redis-py lets a URL's user and password win over keyword arguments, so a
    separately set user or password takes the URL's out; ``redis_tls`` turns
    ``redis://`` into ``rediss://``.
    """
    parts = urlsplit(settings.redis_url)
    if settings.redis_tls and parts.scheme == "redis":
        parts = parts._replace(scheme="rediss")
    if settings.redis_password is not None or settings.redis_username is not None:
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return urlunsplit(parts)


def async_redis(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client with the password and TLS settings applied."""
    import redis.asyncio as aioredis

    return aioredis.from_url(redis_url(settings), **redis_options(settings))


def sync_redis(settings: Settings) -> redis.Redis:
    """A blocking Redis client (the command line) with the same options."""
    import redis

    return redis.Redis.from_url(redis_url(settings), **redis_options(settings))
