"""Every panel query of the Grafana dashboard, evaluated by a real Prometheus.

A worker learns a synthetic shop and some invalid events; a Prometheus of the
test's own (``/usr/bin/prometheus``, loopback only) scrapes it every second
with the job of ``deploy/prometheus.yml``; then each target expression of
``deploy/grafana/dashboards/streamrec.json``, its Grafana variables replaced,
goes to Prometheus's ``/api/v1/query``. Each must be valid PromQL and, unless
``NO_DATA_YET`` says why not, return data: series carrying the labels its
legend shows, with a rise where the worker did something. A query naming a
metric or label the worker does not export returns nothing and fails here,
which the unit test's name check (tests/unit/test_deploy.py) cannot see.

Without ``prometheus`` on PATH the test skips, except in CI (``CI=true``),
where integration tests never skip: ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.events import Event
from producers.kafka import produce_events, produce_raw
from producers.synthetic import SyntheticShop
from tests.integration.conftest import ROOT, Namespace, WorkerProcess, free_port

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamrec.json"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus.yml"
DATASOURCE_YML = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
SCRAPE_INTERVAL_S = 1

# Invalid events, so that the dead-letter series have something to show
BAD_EVENTS = [(b"u1", b"not json at all")] * 3 + [(b"u2", b'{"user_id": "u2"}')] * 2
BAD_REASONS = frozenset({"not_json", "schema"})


@dataclass(frozen=True)
class Expect:
    """What one target must return once the worker has learned and been scraped.

    By default: some series, and one of them above zero. ``zero_ok``: a finite
    value is enough (it may rightly be 0). ``series``: label values that must
    each have a series, above zero unless ``zero_ok``.
    """

    zero_ok: bool = False
    series: Mapping[str, frozenset[str]] = field(default_factory=dict)


# (panel title, refId) -> what its query must show; any other target: Expect()
EXPECTED: dict[tuple[str, str], Expect] = {
    ("Events per second, by type", "A"): Expect(
        series={"event_type": frozenset({"view", "click"})}
    ),
    ("Dead letters per second, by reason", "A"): Expect(series={"reason": BAD_REASONS}),
    # nothing is left to consume once all is learned: a lag of 0 is right
    ("Consumer lag", "A"): Expect(
        zero_ok=True, series={"source": frozenset({"events", "item_updates"})}
    ),
    # the counter is exported from the start, at 0 while Redis is healthy
    ("Redis errors per second", "A"): Expect(zero_ok=True),
    ("Lists published per second, by kind", "A"): Expect(
        series={"kind": frozenset({"personal"})}
    ),
    ("HTTP API requests per second, by route", "A"): Expect(
        series={"route": frozenset({"recommendations", "trending"})}
    ),
    ("HTTP API latency (p99)", "A"): Expect(
        series={"route": frozenset({"recommendations", "trending"})}
    ),
    # hits may be none of this short run's tests: a hit rate of 0 is a value
    ("Live HR@20 of the lists shown", "A"): Expect(zero_ok=True),
    ("Live HR@20 of the lists shown", "B"): Expect(zero_ok=True),
}

# (panel title, refId) -> why its query may rightly return nothing yet; such a
# query must still be valid PromQL. None today: every series above exists
# (labelled ones from the worker's start, or from the test's traffic).
NO_DATA_YET: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Target:
    panel: str
    ref_id: str
    expr: str
    legend: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.panel, self.ref_id)

    def legend_labels(self) -> set[str]:
        """Labels the legend shows (``{{event_type}}``): every series needs them."""
        return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", self.legend))


def dashboard_targets() -> list[Target]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        Target(panel["title"], t["refId"], t["expr"], t.get("legendFormat", ""))
        for panel in dashboard["panels"]
        for t in panel.get("targets", [])
    ]


def grafana_variables(window_s: int) -> dict[str, str]:
    """Concrete values for the variables Grafana would put into a query.

    ``$__interval`` is the datasource's minimum interval (its ``timeInterval``,
    what Grafana uses when the range is short); ``$__rate_interval`` and
    ``$__range`` cover the whole run (at least Grafana's floor of four
    intervals), so a counter that rose at any time since the first scrape
    shows a rate. Template variables take their current value.
    """
    interval_s = datasource_interval_s()
    window_s = max(window_s, 4 * interval_s)
    values = {
        "__interval": f"{interval_s}s",
        "__interval_ms": str(interval_s * 1000),
        "__rate_interval": f"{window_s}s",
        "__range": f"{window_s}s",
        "__range_s": str(window_s),
        "__range_ms": str(window_s * 1000),
    }
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value")
        assert current is not None, f"template variable {variable['name']}: no value"
        if isinstance(current, list):
            current = "|".join(current)
        values[variable["name"]] = ".*" if current == "$__all" else str(current)
    return values


def datasource_interval_s() -> int:
    sources = yaml.safe_load((DATASOURCE_YML / "prometheus.yml").read_text())
    interval = sources["datasources"][0].get("jsonData", {}).get("timeInterval", "15s")
    match = re.fullmatch(r"(\d+)s", interval)
    assert match, f"timeInterval {interval!r}: only seconds are understood here"
    return int(match.group(1))


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with ``$name``, ``${name}`` and ``${name:format}`` replaced."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"no value for the Grafana variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$(?:(\w+)|\{(\w+)(?::\w+)?\})", value, expr)


class Prometheus:
    """A ``prometheus`` process scraping one target with the deployed job."""

    def __init__(self, binary: str, folder: Path, target: str) -> None:
        self.binary = binary
        self.folder = folder
        self.target = target
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started = time.monotonic()
        (self.job,) = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]

    def config(self) -> dict[str, Any]:
        """deploy/prometheus.yml's job (name, metrics path, ...) on our target."""
        job = dict(self.job)
        job["static_configs"] = [{"targets": [self.target]}]
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        every = f"{SCRAPE_INTERVAL_S}s"
        return {
            "global": {
                "scrape_interval": every,
                "scrape_timeout": every,
                "evaluation_interval": every,
            },
            "scrape_configs": [job],
        }

    @property
    def log_path(self) -> Path:
        return self.folder / "prometheus.log"

    def start(self, timeout: float = 30.0) -> Prometheus:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started = time.monotonic()
        self.wait_for(self.ready, timeout, "ready")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def ready(self) -> bool:
        with urllib.request.urlopen(self.url("/-/ready"), timeout=5) as response:
            return response.status == 200

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def query(self, expr: str) -> dict[str, Any]:
        """Prometheus's answer to an instant query at now, errors included."""
        body = urllib.parse.urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(
                self.url("/api/v1/query"), data=body, timeout=10
            ) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:  # 400/422: bad query, as JSON
            return json.load(error)

    def value(self, expr: str) -> float:
        """The one value of ``expr`` (a scalar-like vector); NaN when none."""
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if len(result) == 1 else math.nan

    def wait_for(
        self, condition: Callable[[], bool], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, (
                f"prometheus exited:\n{self.log()}"
            )
            try:
                if condition():
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        raise AssertionError(f"prometheus: not {what} after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        why = "prometheus is not on PATH (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; in CI integration tests never skip")
        pytest.skip(why)
    return binary


@pytest.fixture(scope="session")
def prometheus_path() -> str:
    return prometheus_binary()


@pytest.fixture
def prometheus(
    prometheus_path: str, tmp_path: Path
) -> Iterator[Callable[[str], Prometheus]]:
    """Starts Prometheus servers scraping a target; stops them at the end."""
    servers: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        folder = tmp_path / f"prometheus-{len(servers)}"
        servers.append(Prometheus(prometheus_path, folder, target))
        return servers[-1].start()

    yield start
    for server in servers:
        server.stop()


def produce(ns: Namespace, events: list[Event]) -> None:
    s = ns.settings
    asyncio.run(
        produce_events(
            events, bootstrap=s.kafka_bootstrap, topic=s.events_topic, progress=False
        )
    )
    asyncio.run(
        produce_raw(BAD_EVENTS, bootstrap=s.kafka_bootstrap, topic=s.events_topic)
    )


def use_the_api(worker: WorkerProcess, user: str, item: str) -> None:
    """One request per route, as a client would (an error answer counts too)."""
    for path in (
        f"/recommendations/{user}?k=5",
        f"/items/{item}/similar?k=5",
        "/trending?k=5",
        "/healthz",
    ):
        url = f"http://127.0.0.1:{worker.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
        except urllib.error.HTTPError as error:  # e.g. /healthz's 503 under load
            error.read()


def problems(target: Target, answer: dict[str, Any]) -> list[str]:
    """What is wrong with one target's answer; empty when it is as expected."""
    if answer.get("status") != "success":
        return [f"invalid: {answer.get('errorType')}: {answer.get('error')}"]
    if target.key in NO_DATA_YET:
        return []
    expect = EXPECTED.get(target.key, Expect())
    data = answer["data"]
    if data["resultType"] != "vector":
        return [f"a {data['resultType']}, not the vector a panel draws"]
    series = [
        (item["metric"], float(item["value"][1]))
        for item in data["result"]
        if math.isfinite(float(item["value"][1]))
    ]
    if not series:
        return [f"no data (result: {data['result']})"]
    found: list[str] = []
    for labels, _ in series:
        missing = target.legend_labels() - set(labels)
        if missing:
            found.append(f"series {labels} lacks the legend's {sorted(missing)}")
    if not expect.zero_ok and not any(v > 0 for _, v in series):
        found.append(f"nothing above zero: {series}")
    for label, wanted in expect.series.items():
        shown = {labels.get(label) for labels, v in series if expect.zero_ok or v > 0}
        if not wanted <= shown:
            found.append(f"no series for {label}={sorted(wanted - shown)}: {series}")
    return found


def test_every_dashboard_query_returns_data_from_a_scraped_worker(
    prometheus: Callable[[str], Prometheus], namespace: Namespace
) -> None:
    targets = dashboard_targets()
    assert targets, "the dashboard has no targets"
    keys = {t.key for t in targets}
    assert set(EXPECTED) <= keys, sorted(set(EXPECTED) - keys)
    assert set(NO_DATA_YET) <= keys, sorted(set(NO_DATA_YET) - keys)

    worker = namespace.worker()
    server = prometheus(f"127.0.0.1:{worker.port}")
    job = server.job["job_name"]
    worker.start()
    # a scrape before any event, so that every counter's rise falls in the range
    server.wait_for(
        lambda: server.value(f'up{{job="{job}"}}') == 1, 30, "scraping the worker"
    )

    events = list(SyntheticShop(n_users=300, n_items=1500, seed=3).events(2000))
    produce(namespace, events)
    total = len(events) + len(BAD_EVENTS)
    worker.wait_for(
        lambda: worker.metrics().get("streamrec_batch_size_events_sum", 0) >= total,
        60,
        "all events taken",
    )
    user, item = events[-1].user_id, events[-1].item_id
    use_the_api(worker, user, item)
    server.wait_for(
        lambda: server.value("sum(streamrec_batch_size_events_sum)") >= total,
        30,
        "scraping the learned events",
    )

    # Grafana refreshes the panels until they show the run; so does the test,
    # with the API in use meanwhile (a route's series starts at its first use)
    answers: dict[tuple[str, str], tuple[str, list[str]]] = {}
    deadline = time.monotonic() + 30
    while True:
        use_the_api(worker, user, item)
        window_s = math.ceil(time.monotonic() - server.started) + 5
        values = grafana_variables(window_s)
        for target in targets:
            expr = substitute(target.expr, values)
            answers[target.key] = (expr, problems(target, server.query(expr)))
        if not any(found for _, found in answers.values()):
            break
        if time.monotonic() > deadline or not worker.alive():
            break
        time.sleep(SCRAPE_INTERVAL_S)

    report = [
        f"{panel} [{ref_id}]: {expr}\n    " + "\n    ".join(found)
        for (panel, ref_id), (expr, found) in answers.items()
        if found
    ]
    assert not report, "dashboard queries that fail:\n" + "\n".join(report)
