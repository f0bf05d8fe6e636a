"""The worker's HTTP API, on Faust's own web server beside ``/metrics``.

``GET /recommendations/{user_id}``, ``GET /items/{item_id}/similar``,
``GET /trending`` and ``GET /healthz``; docs/openapi.yaml describes them and a
unit test keeps that file and the registered routes equal. Every answer is
JSON. A bad request gets a 4xx whose body says which parameter is wrong and
what would be accepted::

    {"error": {"code": "invalid_parameter", "parameter": "k",
               "message": "k must be an integer from 1 to 1000, got '0'"}}

Lists are read from Redis (one GET), similar items from the worker's replica
of the item factors (:mod:`models.similar`), so both are as fresh as the
stream. Nothing here writes.

Threads. The pages run on the worker's event loop, beside the learner, which
yields between its steps so that an answer waits for at most one step.
``STREAMREC_WEB_IN_THREAD`` serves them from a thread of Faust's with a loop
of its own instead; that was measured slower while learning (the web thread
gives up the GIL at every socket call and waits to win it back from the
learner: docs/BENCHMARKS.md, "API"), and is kept to compare. Either way the
pages read Redis through a client of the loop they run on, never the
publisher's, and ``/healthz`` asks the lag probe (which uses the main loop's
consumer) through the main loop. Reading the replica's item table from the
web thread needs no lock: rows are only appended, a row's index is published
after its row, and a read that overlaps an update sees the old or the new
factors of an item, both of which it would have served a moment apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import faust
import msgspec
from aiohttp import web as aiohttp_web
from redis.exceptions import RedisError

from config.security import async_redis, kafka_client_options
from models.similar import METRICS, Metric, similar_items
from streams.lag import LagProbe
from streams.publisher import decode_list
from streams.trending import TrendingTracker, decode_trending

if TYPE_CHECKING:
    from streams.worker import StreamrecWorker

log = logging.getLogger(__name__)

MAX_K = 1000
JSON = "application/json"
# How long /healthz waits for Kafka and for Redis before calling them down.
HEALTH_TIMEOUT_S = 2.0
# How long a read waits for Redis: a shop page would rather get a 503 (and
# show something else) than hang for the client's own 5 s socket timeout.
READ_TIMEOUT_S = 1.0

Query = Mapping[str, str]
Answer = tuple[int, Any]  # status code, a msgspec-encodable body
Handler = Callable[..., Awaitable[Answer]]
T = TypeVar("T")


class ApiError(Exception):
    """A request the API refuses; becomes a JSON error body."""

    def __init__(
        self, status: int, code: str, message: str, parameter: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter

    def body(self) -> dict[str, dict[str, str]]:
        error = {"code": self.code, "message": self.message}
        if self.parameter is not None:
            error["parameter"] = self.parameter
        return {"error": error}


# --- validation ----------------------------------------------------------------


def parse_k(query: Query, default: int) -> int:
    """The ``k`` query parameter: an integer from 1 to :data:`MAX_K`."""
    raw = query.get("k")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_K:
        raise ApiError(
            400,
            "invalid_parameter",
            f"k must be an integer from 1 to {MAX_K}, got {raw[:40]!r}",
            "k",
        )
    return int(raw)


def check_id(name: str, value: str, max_length: int) -> str:
    """A user or item id from the path: 1 to ``max_length`` characters."""
    if not value or len(value) > max_length:
        raise ApiError(
            400,
            "invalid_parameter",
            f"{name} must have 1 to {max_length} characters "
            f"(STREAMREC_MAX_ID_LENGTH), got {len(value)}",
            name,
        )
    return value


def check_known(query: Query, allowed: tuple[str, ...]) -> None:
    """Refuse query parameters the route does not take (a typo would otherwise
    be silently ignored)."""
    for name in query:
        if name not in allowed:
            accepted = ", ".join(allowed) if allowed else "none"
            raise ApiError(
                400,
                "unknown_parameter",
                f"unknown query parameter {name[:40]!r}; this route takes: {accepted}",
                name[:40],
            )


def parse_metric(query: Query) -> Metric:
    raw = query.get("metric", "cosine")
    if raw not in METRICS:
        raise ApiError(
            400,
            "invalid_parameter",
            f"metric must be one of {', '.join(METRICS)}, got {raw[:40]!r}",
            "metric",
        )
    return raw  # type: ignore[return-value]


# --- answers -------------------------------------------------------------------


class ShopperList(msgspec.Struct):
    user_id: str
    source: str  # personal | popular | trending
    items: list[str]
    scores: list[float]
    refreshed_at: float | None
    model_version: int | None


class SimilarList(msgspec.Struct):
    item_id: str
    metric: str
    items: list[str]
    scores: list[float]
    model_version: int
    items_known: int


class TrendingAnswer(msgspec.Struct):
    items: list[str]
    scores: list[float]
    refreshed_at: float | None
    window_s: int
    half_life_s: float


class Health(msgspec.Struct):
    status: str  # ok | unavailable
    kafka: dict[str, Any]
    redis: dict[str, Any]
    consumer_lag: dict[str, int]
    replica_caught_up: bool
    items_known: int


_encoder = msgspec.json.Encoder()


@aiohttp_web.middleware
async def json_http_errors(
    request: aiohttp_web.Request, handler: Callable[..., Awaitable[Any]]
) -> Any:
    """Answer an unknown path or a method other than GET with a JSON error."""
    try:
        return await handler(request)
    except aiohttp_web.HTTPNotFound:
        error = ApiError(404, "not_found", f"no route {request.path[:100]!r}")
        headers = {}
    except aiohttp_web.HTTPMethodNotAllowed as exc:
        error = ApiError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here; use "
            + ", ".join(sorted(exc.allowed_methods)),
        )
        headers = {"Allow": ", ".join(sorted(exc.allowed_methods))}
    return aiohttp_web.Response(
        body=_encoder.encode(error.body()),
        status=error.status,
        content_type=JSON,
        headers=headers,
    )


@dataclass(frozen=True)
class Route:
    """One registered page: its path (as Faust and OpenAPI write it) and handler."""

    name: str
    path: str
    handler: Handler


class StreamrecApi:
    """The handlers, over one worker's Redis client, replica and trending table."""

    def __init__(self, worker: StreamrecWorker) -> None:
        s = worker.settings
        self.worker = worker
        self.settings = s
        self.metrics = worker.metrics
        # the trending publisher runs on the main loop, with the publisher's client
        self.trending = TrendingTracker(
            worker.app,
            s,
            worker.item_updates_topic,
            worker.publisher.redis,
            worker.metrics,
        )
        # the pages' own client, made on the loop that serves them (see above)
        self._reader: Any = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self.lag = LagProbe(
            worker.app,
            bootstrap=s.kafka_bootstrap,
            group_id=s.app_id,
            topics={"events": s.events_topic, "item_updates": s.item_updates_topic},
            metrics=worker.metrics,
            client_options=kafka_client_options(s),
        )
        self.routes = (
            Route(
                "recommendations", "/recommendations/{user_id}", self.recommendations
            ),
            Route("similar", "/items/{item_id}/similar", self.similar),
            Route("trending", "/trending", self.trending_list),
            Route("healthz", "/healthz", self.healthz),
        )

    def register(self, app: faust.App) -> None:
        """Add the pages and the background tasks to the worker's app."""
        for route in self.routes:
            app.page(route.path, name=route.name)(self._view(route))
        # Faust's web driver is aiohttp: its 404 and 405 answers become JSON too
        app.web.web_app.middlewares.append(json_http_errors)
        app.web.web_app.on_cleanup.append(self._close_reader)
        app.task(self._publish_trending)
        app.task(self._measure_lag)

    async def _publish_trending(self) -> None:
        await self.trending.run()

    async def _measure_lag(self) -> None:
        await self.lag.run(self.settings.lag_interval_s)

    # --- handlers ---------------------------------------------------------------

    async def recommendations(self, query: Query, user_id: str) -> Answer:
        """The shopper's list from Redis, or the trending list if there is none."""
        check_known(query, ("k",))
        k = parse_k(query, self.settings.top_k)
        check_id("user_id", user_id, self.settings.max_id_length)
        payload = await self._redis_get(self.settings.key_prefix + user_id)
        if payload is not None:
            entry = decode_list(payload)
            return 200, ShopperList(
                user_id=user_id,
                source="personal" if entry.personal else "popular",
                items=entry.items[:k],
                scores=entry.scores[:k],
                refreshed_at=entry.published_at,
                model_version=entry.model_version,
            )
        trending = await self._trending(k)
        return 200, ShopperList(
            user_id=user_id,
            source="trending",
            items=trending.items,
            scores=trending.scores,
            refreshed_at=trending.refreshed_at,
            model_version=None,
        )

    async def similar(self, query: Query, item_id: str) -> Answer:
        """Items nearest the item in this worker's replica of the factors."""
        check_known(query, ("k", "metric"))
        k = parse_k(query, self.settings.top_k)
        metric = parse_metric(query)
        check_id("item_id", item_id, self.settings.max_id_length)
        items = self.worker.model.items
        found = similar_items(items, item_id, k, metric)
        if found is None:
            raise ApiError(
                404,
                "unknown_item",
                f"item {item_id[:40]!r} has no factors yet: no event has named it",
                "item_id",
            )
        return 200, SimilarList(
            item_id=item_id,
            metric=metric,
            items=found.items,
            scores=found.scores,
            model_version=items.version,
            items_known=len(items),
        )

    async def trending_list(self, query: Query) -> Answer:
        check_known(query, ("k",))
        return 200, await self._trending(parse_k(query, self.settings.top_k))

    async def healthz(self, query: Query) -> Answer:
        """Whether Kafka and Redis answer, and how far behind this worker is."""
        check_known(query, ())
        reading, redis_error = await asyncio.gather(
            self._on_main_loop(self.lag.measure(HEALTH_TIMEOUT_S)), self._ping_redis()
        )
        healthy = reading.ok and redis_error is None
        items = self.worker.model.items
        return (200 if healthy else 503), Health(
            status="ok" if healthy else "unavailable",
            kafka={"ok": reading.ok, "error": reading.error},
            redis={"ok": redis_error is None, "error": redis_error},
            consumer_lag=reading.lag,
            replica_caught_up=self.worker.replica.caught_up.is_set(),
            items_known=len(items),
        )

    # --- helpers ----------------------------------------------------------------

    async def _trending(self, k: int) -> TrendingAnswer:
        s = self.settings
        payload = await self._redis_get(s.trending_key)
        if payload is None:  # no worker has published yet
            return TrendingAnswer(
                [], [], None, s.trending_window_s, s.trending_half_life_s
            )
        trending = decode_trending(payload)
        return TrendingAnswer(
            trending.items[:k],
            trending.scores[:k],
            trending.refreshed_at,
            trending.window_s,
            trending.half_life_s,
        )

    @property
    def redis(self) -> Any:
        """The Redis client of the loop the pages run on."""
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader_loop is not loop:
            self._reader, self._reader_loop = async_redis(self.settings), loop
        return self._reader

    async def _close_reader(self, _web_app: aiohttp_web.Application) -> None:
        # aiohttp's cleanup runs on the loop that served the pages
        if self._reader is not None and self._reader_loop is asyncio.get_running_loop():
            await self._reader.aclose()
        self._reader = self._reader_loop = None

    async def _on_main_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the worker's main loop and wait for it here."""
        main = self.worker.app.loop
        if asyncio.get_running_loop() is main:
            return await coroutine
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(coroutine, main)
        )

    async def _redis_get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(
                READ_TIMEOUT_S
            ):  # no extra task, unlike wait_for
                return await self.redis.get(key)
        except (RedisError, OSError, TimeoutError) as exc:
            self.metrics.redis_errors.inc()
            raise ApiError(
                503, "redis_unavailable", f"Redis did not answer: {type(exc).__name__}"
            ) from exc

    async def _ping_redis(self) -> str | None:
        try:
            await asyncio.wait_for(self.redis.ping(), HEALTH_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    def _view(self, route: Route) -> type[faust.web.View]:
        api = self

        class ApiView(faust.web.View):
            async def get(
                self, request: faust.web.Request, **params: str
            ) -> faust.web.Response:
                return await api.answer(self, route, request, params)

        ApiView.__name__ = ApiView.__qualname__ = f"{route.name.title()}View"
        return ApiView

    async def answer(
        self,
        view: faust.web.View,
        route: Route,
        request: faust.web.Request,
        params: Mapping[str, str],
    ) -> faust.web.Response:
        """Run a handler; time it, count it, and turn errors into JSON."""
        started = time.perf_counter()
        try:
            status, body = await route.handler(request.query, **params)
        except ApiError as exc:
            status, body = exc.status, exc.body()
        except Exception:
            log.exception("request failed: route=%s", route.name)
            status, body = 500, {"error": {"code": "internal", "message": "see log"}}
        response = view.bytes(_encoder.encode(body), content_type=JSON, status=status)
        self.metrics.http_requests.labels(route.name, str(status)).inc()
        self.metrics.http_seconds.labels(route.name).observe(
            time.perf_counter() - started
        )
        return response
