"""Reading the public datasets in /work/shared/data as contract events.

Expected counts are the ones ``data/README.md`` states, checked there by script.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import EVENT_TYPES, Event, decode_event, encode_event
from producers.datasets import (
    FORMATS,
    detect_format,
    movielens_event_type,
    read_events,
    read_events_with_stats,
)

DATA = Path(
    os.environ.get("STREAMREC_DATA_DIR")
    or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)
MOVIELENS = DATA / "movielens-latest-small" / "ratings.csv"
OTTO_CSV = DATA / "otto-sample" / "events.csv"
OTTO_JSONL = DATA / "otto-sample" / "train_fixture.jsonl"
TAOBAO = DATA / "taobao-userbehavior" / "user_behavior_head.csv.gz"


def line_of(event: Event) -> int:
    return int(event.event_id.split(":")[1])


def assert_stably_sorted(events: list[Event]) -> None:
    """Timestamps never decrease, and equal timestamps keep file order."""
    ties = 0
    for before, after in pairwise(events):
        assert before.timestamp <= after.timestamp
        if before.timestamp == after.timestamp:
            ties += 1
            assert line_of(before) < line_of(after), (before, after)
    assert ties > 0, "no equal timestamps: the stability check checked nothing"


def fact(event: Event) -> tuple:
    """An event without its id, which names the file it came from."""
    return (
        event.user_id,
        event.item_id,
        event.event_type,
        event.timestamp,
        event.session_id,
    )


# --- MovieLens -------------------------------------------------------------------


def test_movielens_counts_match_the_published_statistics():
    events, stats = read_events_with_stats(MOVIELENS)

    assert stats.fmt == "movielens"
    assert (stats.read, stats.kept, stats.dropped) == (100_836, 100_836, {})
    assert (stats.users, stats.items) == (610, 9_724)
    assert len(events) == 100_836
    assert events[0].timestamp == 828_124_615_000
    assert events[-1].timestamp == 1_537_799_250_000


def test_movielens_first_line_maps_to_an_event_in_ms():
    first = next(e for e in read_events(MOVIELENS) if e.event_id == "ratings:2")

    # The file's first row is "1,1,4.0,964982703\r\n".
    assert first == Event("ratings:2", "1", "1", "add_to_cart", 964_982_703_000)


def test_movielens_is_sorted_by_time_and_stable_on_ties():
    assert_stably_sorted(read_events(MOVIELENS))


@pytest.mark.parametrize(
    ("rating", "event_type"),
    [
        (5.0, "purchase"),
        (4.5, "add_to_cart"),
        (4.0, "add_to_cart"),
        (3.5, "click"),
        (3.0, "click"),
        (2.5, "view"),
        (0.5, "view"),
    ],
)
def test_movielens_rating_strength_maps_onto_event_weights(rating, event_type):
    assert movielens_event_type(rating) == event_type


def test_movielens_type_mix_follows_the_ratings():
    with open(MOVIELENS, newline="") as stream:
        rows = list(csv.DictReader(stream))
    expected = Counter(movielens_event_type(float(row["rating"])) for row in rows)

    assert Counter(e.event_type for e in read_events(MOVIELENS)) == expected
    assert expected["purchase"] == sum(row["rating"] == "5.0" for row in rows)


def test_limit_keeps_the_first_events_of_the_file_then_sorts():
    events = read_events(MOVIELENS, limit=100)

    assert sorted(line_of(e) for e in events) == list(range(2, 102))
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert read_events(MOVIELENS, limit=0) == []


# --- OTTO --------------------------------------------------------------------------


def test_otto_csv_counts_and_types():
    events, stats = read_events_with_stats(OTTO_CSV)

    assert stats.fmt == "otto"
    assert (stats.read, stats.kept, stats.users, stats.items) == (862, 862, 20, 510)
    assert Counter(e.event_type for e in events) == {
        "click": 800,
        "add_to_cart": 52,
        "purchase": 10,
    }
    # The session stands in for the user.
    assert all(e.session_id == e.user_id for e in events)
    assert events[0].timestamp == 1_659_304_800_025
    assert events[-1].timestamp == 1_661_723_997_885
    assert_stably_sorted(events)


def test_otto_jsonl_gives_the_same_events_as_the_flattened_csv():
    from_jsonl, stats = read_events_with_stats(OTTO_JSONL)

    assert stats.fmt == "otto-jsonl"
    assert [fact(e) for e in from_jsonl] == [fact(e) for e in read_events(OTTO_CSV)]
    assert len({e.event_id for e in from_jsonl}) == 862


# --- Taobao ------------------------------------------------------------------------


def test_taobao_drops_fav_and_counts_it():
    events, stats = read_events_with_stats(TAOBAO)

    assert stats.fmt == "taobao"
    assert stats.read == 84_287
    assert stats.dropped == {"fav": 2_351}
    assert stats.kept == len(events) == 84_287 - 2_351
    assert stats.users == 814
    assert Counter(e.event_type for e in events) == {
        "view": 75_693,
        "add_to_cart": 4_494,
        "purchase": 1_749,
    }


def test_taobao_can_keep_fav_as_an_event_type():
    events, stats = read_events_with_stats(TAOBAO, fav_as="click")

    assert stats.dropped == {}
    assert stats.kept == len(events) == 84_287
    assert Counter(e.event_type for e in events)["click"] == 2_351
    with pytest.raises(ValueError, match="fav_as"):
        read_events(TAOBAO, fav_as="like")  # type: ignore[arg-type]


def test_taobao_keeps_dataset_ids_and_converts_seconds():
    events = read_events(TAOBAO)
    first_line = next(e for e in events if e.event_id == "user_behavior_head:1")

    # The published file starts "1,2268318,2520377,pv,1511544070".
    assert first_line == Event(
        "user_behavior_head:1", "1", "2268318", "view", 1_511_544_070_000
    )
    assert_stably_sorted(events)


# --- every format --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        (MOVIELENS, "movielens"),
        (OTTO_CSV, "otto"),
        (OTTO_JSONL, "otto-jsonl"),
        (TAOBAO, "taobao"),
    ],
)
def test_format_is_detected_and_events_honour_the_contract(path, fmt):
    assert detect_format(path) == fmt
    events = read_events(path, fmt=fmt)

    assert len({e.event_id for e in events}) == len(events)
    for event in events[:: max(1, len(events) // 2000)]:
        assert event.event_type in EVENT_TYPES
        assert decode_event(encode_event(event)) == event


def test_gzip_is_read_by_its_content_not_its_name(tmp_path):
    hidden = tmp_path / "events.csv"  # gzip inside, no .gz suffix
    hidden.write_bytes(gzip.compress(OTTO_CSV.read_bytes()))

    assert [fact(e) for e in read_events(hidden)] == [
        fact(e) for e in read_events(OTTO_CSV)
    ]


def test_an_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_events(OTTO_CSV, fmt="parquet")
    strange = tmp_path / "strange.txt"
    strange.write_text("a;b;c\n")
    with pytest.raises(ValueError, match=r"strange\.txt, line 1: .*pass fmt="):
        read_events(strange)
    assert set(FORMATS) == {"movielens", "otto", "otto-jsonl", "taobao", "csv"}


# --- malformed lines -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n"
            "1,3,four,964981247\r\n",
            3,
        ),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,1,9.0,964982703\n", 2),
        ("events.csv", "session,aid,ts,type\n0,1,5,clicks\n0,2,6,likes\n", 3),
        (
            "head.csv",
            "1,2,3,pv,1511544070\n1,2,3,pv,1511544071\n1,2,3,pv\n",
            3,
        ),
        ("head.csv", "1,2,3,pv,1511544070\n1,2,3,share,1511544071\n", 2),
        (
            "train.jsonl",
            '{"session":1,"events":[{"aid":1,"ts":5,"type":"clicks"}]}\n'
            '{"session":2,"events":[{"aid":1,"ts":"x","type":"clicks"}]}\n',
            2,
        ),
        (
            "contract.csv",
            "event_id,user_id,item_id,event_type,timestamp\n"
            "e1,u1,i1,view,1000\ne2,u1,i1,like,1001\n",
            3,
        ),
    ],
)
def test_a_malformed_line_is_reported_with_file_and_line(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_bytes(text.encode())

    with pytest.raises(ValueError, match=rf"{name}, line {line}:"):
        read_events(path)


def test_a_wrong_header_is_reported_on_line_1(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("user,movie,rating,timestamp\n1,1,4.0,964982703\n")

    with pytest.raises(ValueError, match=r"ratings\.csv, line 1: expected the header"):
        read_events(path, fmt="movielens")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 1: cannot tell"):
        read_events(path)


def test_a_malformed_line_in_a_gzip_file_is_reported(tmp_path):
    path = tmp_path / "head.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3,pv,1511544070\n1,2,,buy,\n"))

    with pytest.raises(ValueError, match=r"head\.csv\.gz, line 2: malformed taobao"):
        read_events(path)


# --- the contract as CSV -------------------------------------------------------------


def test_contract_csv_reads_optional_columns_in_any_order(tmp_path):
    path = tmp_path / "shop.csv"
    path.write_text(
        "timestamp,event_type,item_id,user_id,event_id,price,session_id,quantity\n"
        "2000,purchase,sku-1,u-7,e-3,19.9,s-1,2\n"
        "1000,view,sku-1,u-7,e-1,,,\n"
        "2000,add_to_cart,sku-2,u-8,e-2,5,,\n"
    )

    assert read_events(path) == [
        Event("e-1", "u-7", "sku-1", "view", 1000),
        Event("e-3", "u-7", "sku-1", "purchase", 2000, "s-1", 19.9, 2),
        Event("e-2", "u-8", "sku-2", "add_to_cart", 2000, price=5.0),
    ]


_ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1)
_events = st.builds(
    Event,
    event_id=_ids,
    user_id=_ids,
    item_id=_ids,
    event_type=st.sampled_from(EVENT_TYPES),
    timestamp=st.integers(0, 4_000_000_000_000),
    session_id=st.none() | _ids,
    price=st.none() | st.floats(0, 1e6, allow_nan=False),
    quantity=st.none() | st.integers(1, 1_000_000),
)


def _cell(value: object) -> object:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value  # repr round-trips


@settings(max_examples=50, deadline=None)
@given(st.lists(_events, max_size=30))
def test_contract_csv_round_trips_any_events(tmp_path_factory, events):
    path = tmp_path_factory.mktemp("csv") / "events.csv"
    columns = ["event_id", "user_id", "item_id", "event_type", "timestamp"]
    columns += ["session_id", "price", "quantity"]
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for event in events:
            writer.writerow([_cell(getattr(event, column)) for column in columns])

    assert read_events(path, fmt="csv") == sorted(events, key=lambda e: e.timestamp)
