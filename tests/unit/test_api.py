"""The HTTP API: request checks, and docs/openapi.yaml against the routes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from config.settings import Settings
from streams.api import ApiError, check_id, check_known, parse_k, parse_metric
from streams.worker import StreamrecWorker

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


@pytest.mark.parametrize("raw", ["0", "1001", "-3", "abc", "2.5", "", " 7", "٣"])
def test_k_outside_1_to_1000_or_not_an_integer_is_refused(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_k({"k": raw}, 20)
    error = caught.value
    assert error.status == 400 and error.parameter == "k"
    assert "from 1 to 1000" in error.body()["error"]["message"]


def test_k_defaults_and_bounds() -> None:
    assert parse_k({}, 20) == 20
    assert parse_k({"k": "1"}, 20) == 1
    assert parse_k({"k": "1000"}, 20) == 1000


def test_ids_must_be_1_to_max_length_characters() -> None:
    assert check_id("user_id", "u" * 8, 8) == "u" * 8
    for bad in ("", "u" * 9):
        with pytest.raises(ApiError) as caught:
            check_id("user_id", bad, 8)
        assert caught.value.status == 400
        assert caught.value.body()["error"]["parameter"] == "user_id"


def test_unknown_parameters_and_metrics_are_named() -> None:
    with pytest.raises(ApiError, match="'kk'") as caught:
        check_known({"kk": "3"}, ("k",))
    assert caught.value.body()["error"]["code"] == "unknown_parameter"
    assert parse_metric({}) == "cosine"
    assert parse_metric({"metric": "dot"}) == "dot"
    with pytest.raises(ApiError, match="cosine, dot"):
        parse_metric({"metric": "l2"})


def registered_routes() -> set[str]:
    worker = StreamrecWorker(Settings(), CollectorRegistry())
    web = worker.app.web
    web.blueprints.apply(web)  # what the web server adds when it starts
    return set(web.views)


def test_every_route_is_described_in_openapi_and_nothing_else() -> None:
    described = set(yaml.safe_load(OPENAPI.read_text())["paths"])
    assert registered_routes() == described


def test_openapi_path_parameters_match_the_paths() -> None:
    spec = yaml.safe_load(OPENAPI.read_text())
    assert spec["openapi"].startswith("3.")
    shared = spec["components"]["parameters"]
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            names = set()
            for parameter in operation.get("parameters", []):
                if "$ref" in parameter:
                    parameter = shared[parameter["$ref"].rsplit("/", 1)[1]]
                if parameter["in"] == "path":
                    names.add(parameter["name"])
            assert names == {
                part[1:-1] for part in path.split("/") if part.startswith("{")
            }, path


def test_the_pages_read_redis_through_a_client_of_their_own_loop() -> None:
    # With STREAMREC_WEB_IN_THREAD Faust serves the pages from a thread with its
    # own loop; a redis.asyncio client belongs to the loop that made it.
    worker = StreamrecWorker(Settings(web_in_thread=True), CollectorRegistry())
    api = worker.api
    assert worker.app.conf.web_in_thread

    async def clients() -> tuple[object, object]:
        return api.redis, api.redis

    first, again = asyncio.run(clients())
    assert first is again
    assert first is not worker.publisher.redis
    other, _ = asyncio.run(clients())
    assert other is not first


def test_a_page_asks_the_main_loop_for_what_only_it_may_touch() -> None:
    worker = StreamrecWorker(Settings(), CollectorRegistry())
    main = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(
        target=lambda: (main.call_soon(ready.set), main.run_forever()), daemon=True
    )
    thread.start()
    ready.wait(5)
    worker.app.loop = main

    async def where() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def from_the_web_loop() -> tuple[object, object]:
        return await worker.api._on_main_loop(where()), asyncio.get_running_loop()

    try:
        ran_on, caller = asyncio.run(from_the_web_loop())
        assert ran_on is main and caller is not main
    finally:
        main.call_soon_threadsafe(main.stop)
        thread.join(5)
        main.close()
