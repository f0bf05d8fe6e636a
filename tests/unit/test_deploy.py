"""The deployment files stay in step with the worker: the dashboard queries only
metrics it exports, Prometheus scrapes its metrics path and port, and compose
runs what both refer to."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from config.settings import Settings
from streams.metrics import WorkerMetrics
from streams.worker import StreamrecWorker

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamrec.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

# PromQL words that look like metric names but are not
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def exported_names() -> set[str]:
    """Every series name the worker's registry can expose."""
    names = set()
    for family in WorkerMetrics(CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    names = set()
    for match in _IDENTIFIER.finditer(expr):
        rest = expr[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function or an aggregation
        names.add(word)
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]


def test_the_parser_finds_names_and_skips_functions() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{x="b c"}'
        "[$__rate_interval]))) / sum(b_total) or vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    exported = exported_names()
    queried = set()
    for expr in dashboard_queries():
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        queried |= names
    assert queried <= exported, sorted(queried - exported)


def test_the_dashboard_shows_what_the_operators_asked_for() -> None:
    queried = set().union(*(metric_names(e) for e in dashboard_queries()))
    for needed in (
        "streamrec_events_consumed_total",
        "streamrec_events_invalid_total",
        "streamrec_freshness_seconds_bucket",
        "streamrec_consumer_lag_messages",
        "streamrec_batch_size_events_bucket",
        "streamrec_update_seconds_bucket",
        "streamrec_topk_seconds_bucket",
        "streamrec_redis_errors_total",
        "streamrec_users_known",
        "streamrec_items_known",
        "streamrec_live_hit_rate_20",
    ):
        assert needed in queried, needed


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    sources = yaml.safe_load(
        (PROVISIONING / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {source["uid"] for source in sources}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_prometheus_scrapes_every_worker_on_its_metrics_path_and_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    worker = StreamrecWorker(Settings(), CollectorRegistry())
    port = Settings().web_port
    services = compose()["services"]
    workers = {
        name
        for name, service in services.items()
        if service.get("command", [])[-1:] == ["worker"]
    }
    assert workers, "compose runs no worker"
    scraped = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") in worker.app.web.views
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, target_port = target.rpartition(":")
                assert int(target_port) == port, target
                scraped.add(host)
    assert scraped == workers


def test_compose_mounts_the_grafana_files_that_exist() -> None:
    grafana = compose()["services"]["grafana"]
    mounted = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        assert (ROOT / source).exists(), source
        mounted[target] = source
    assert "/etc/grafana/provisioning" in mounted
    provider = yaml.safe_load(
        (PROVISIONING / "dashboards" / "streamrec.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] in mounted
