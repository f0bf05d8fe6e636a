"""``streamrec evaluate``: table, JSON and plot from a small contract CSV."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from producers.synthetic import SyntheticShop
from streams.cli import main

START_MS = 1_700_000_000_000


@pytest.fixture()
def shop_csv(tmp_path: Path) -> Path:
    path = tmp_path / "shop.csv"
    lines = ["event_id,user_id,item_id,event_type,timestamp"]
    for e in SyntheticShop(n_users=25, n_items=40, seed=3).events(700, START_MS):
        lines.append(
            f"{e.event_id},{e.user_id},{e.item_id},{e.event_type},{e.timestamp}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_prints_the_table_and_writes_json(shop_csv, tmp_path, capsys):
    out = tmp_path / "figures.json"

    code = main(
        [
            "--loglevel",
            "warning",
            "evaluate",
            str(shop_csv),
            "--batch-size",
            "4",
            "--json-out",
            str(out),
            "--no-progress",
        ]
    )

    assert code == 0
    printed = capsys.readouterr().out
    assert "HR@20" in printed and "NDCG@10" in printed and "events/s" in printed
    assert "streamrec" in printed and "popularity" in printed
    figures = json.loads(out.read_text())
    assert figures["events"] == 700
    assert figures["batch_size"] == 4
    assert figures["config"]["n_factors"] == 16
    names = [r["name"] for r in figures["results"]]
    assert names == ["streamrec", "popularity"]
    streamrec, popularity = figures["results"]
    assert streamrec["tests"] == popularity["tests"] > 0
    assert 0 <= streamrec["hr@20"] <= 1 and streamrec["events_per_second"] > 0


def test_evaluate_draws_the_rolling_hr_plot(shop_csv, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "hr.png"

    code = main(
        [
            *("evaluate", str(shop_csv), "--plot", str(plot)),
            *("--window", "50", "--no-progress"),
        ]
    )

    assert code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_refuses_a_batch_size_below_one(shop_csv, capsys):
    assert main(["evaluate", str(shop_csv), "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_importing_the_cli_does_not_import_matplotlib():
    code = "import sys, streams.cli; sys.exit('matplotlib' in sys.modules)"

    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
