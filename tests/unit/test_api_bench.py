"""The API benchmark's load generator: bounded, open loop, counts what it sees."""

from __future__ import annotations

import asyncio

from benchmarks.api import _check_bounds, _parser, _vegeta_result, drive
from streams.ops import DeadLetterReport

BODY = b'{"ok": true}'


async def serve(delay_s: float) -> tuple[asyncio.Server, int]:
    """A keep-alive HTTP server on 127.0.0.1 that answers every GET alike."""

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(delay_s)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_the_schedule_is_kept_and_every_answer_counted() -> None:
    async def run() -> None:
        server, port = await serve(0.0)
        async with server:
            result = await drive("127.0.0.1", port, ["/a", "/b"], 400, 0.5, 4, 2.0)
        assert result.completed == 200 and result.statuses == {"200": 200}
        assert 0.45 < result.seconds < 2.0
        assert all(latency >= 0 for latency in result.latencies)

    asyncio.run(run())


def test_a_slow_server_shows_in_latency_from_the_due_time() -> None:
    async def run() -> None:
        server, port = await serve(0.02)  # 20 ms per answer, one connection
        async with server:
            result = await drive("127.0.0.1", port, ["/a"], 200, 0.25, 1, 2.0)
        # 50 requests due within 0.25 s, served one by one in about 1 s: the
        # last waited long after it was due, though each took only 20 ms
        assert result.completed == 50
        assert max(result.latencies) > 0.5 > max(result.service)

    asyncio.run(run())


def test_vegeta_rows_become_latencies_statuses_and_late_sends() -> None:
    # vegeta encode --to=csv: send time (ns), status, latency (ns), bytes
    # out, bytes in, error, ...; status 0 is a request that got no answer
    start = 1_700_000_000_000_000_000
    rows = [
        f"{start},200,1500000,0,120,,,,0,GET,/a,",
        f"{start + 1_000_000},200,2500000,0,120,,,,1,GET,/b,",
        f"{start + 5_000_000},0,2000000000,0,0,timeout,,,2,GET,/a,",
        f"{start + 2_500_000},503,900000,0,80,,,,3,GET,/b,",
    ]
    result = _vegeta_result("\n".join(rows) + "\n", rate=1000.0, elapsed=0.01)
    assert result.statuses == {"200": 2, "503": 1, "error": 1}
    assert result.latencies == [0.0015, 0.0025]  # answered requests only
    # due at 0, 1, 2 and 3 ms: sent at 0, 1, 2.5 and 5 ms, so one was late
    assert result.late_sends == 1


def test_runs_are_bounded() -> None:
    parse = _parser().parse_args
    assert _check_bounds(parse([])) is None
    assert "--rate" in (_check_bounds(parse(["--rate", "100000"])) or "")
    assert "--seconds" in (_check_bounds(parse(["--seconds", "3600"])) or "")


def test_dead_letters_are_counted_by_reason_with_a_few_samples() -> None:
    report = DeadLetterReport()
    for n in range(5):
        report.add({"reason": "schema", "source": f"events/0/{n}"}, b"{}", keep=2)
    report.add({}, None, keep=2)
    assert report.total == 6
    assert report.by_reason == {"schema": 5, "(no reason header)": 1}
    assert [s["source"] for s in report.samples["schema"]] == [
        "events/0/0",
        "events/0/1",
    ]
