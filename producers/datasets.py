"""Public interaction datasets read as streams of contract :class:`Event` s.

:func:`read_events` tells the format from the file (or takes ``fmt``), opens
gzip files transparently and returns the events in time order. The sort is
stable: events with the same timestamp keep the order of the file, as the
prequential protocol in ``EVALUATION.md`` asks.

Formats and how they map onto the contract
------------------------------------------
``movielens``
    GroupLens ``ratings.csv``: ``userId,movieId,rating,timestamp`` (seconds).
    A rating is an explicit strength; it is mapped onto the event type whose
    training weight is closest in spirit, strongest first:

    ============  ===============
    rating        event type
    ============  ===============
    5.0           ``purchase``
    4.0 - 4.5     ``add_to_cart``
    3.0 - 3.5     ``click``
    0.5 - 2.5     ``view``
    ============  ===============

    Low ratings become the weakest positive (``view``), not a negative: the
    model learns from positive-only feedback.
``otto``
    The flattened OTTO sample ``events.csv``: ``session,aid,ts,type`` (ms).
    OTTO has no user id across sessions, so the session stands for the user
    (and is also the ``session_id``). ``clicks`` -> ``click``, ``carts`` ->
    ``add_to_cart``, ``orders`` -> ``purchase``.
``otto-jsonl``
    OTTO's own ``train.jsonl`` layout, one session per line
    (``{"session": .., "events": [{"aid", "ts", "type"}, ..]}``); the same
    mapping as ``otto``, so both files give the same events.
``taobao``
    Alibaba UserBehavior, no header:
    ``user_id,item_id,category_id,behavior_type,timestamp`` (seconds).
    ``pv`` -> ``view``, ``cart`` -> ``add_to_cart``, ``buy`` -> ``purchase``.
    ``fav`` (add to favourites) has no counterpart in the contract and is
    **dropped** by default; :func:`read_events_with_stats` counts the dropped
    lines under the reason ``"fav"``. ``fav_as="click"`` (say) keeps them as
    that event type instead: the prequential check values of
    ``data/README.md`` count every line, ``fav`` included. The category is
    not part of the contract and is not kept. The few events stamped before
    the published window are kept.
``csv``
    The contract itself as CSV: a header naming ``event_id, user_id, item_id,
    event_type, timestamp`` (ms) and optionally ``session_id, price,
    quantity``, in any order. Values are validated like a message on the
    topic.

Ids are the dataset's own, as strings, with nothing prefixed. ``event_id`` is
``"<file stem>:<line number>"`` (line 1 is the header where there is one), and
``"<stem>:<line>:<index in session>"`` for JSONL, so it is unique per file and
points back at its source line. A line that cannot be read raises
:class:`ValueError` naming the file and the line number.
"""

from __future__ import annotations

import csv
import functools
import gzip
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Literal, TextIO

import msgspec

from models.events import EVENT_TYPES, Event, EventType

FORMATS = ("movielens", "otto", "otto-jsonl", "taobao", "csv")

MOVIELENS_HEADER = ("userId", "movieId", "rating", "timestamp")
OTTO_HEADER = ("session", "aid", "ts", "type")
CSV_REQUIRED = ("event_id", "user_id", "item_id", "event_type", "timestamp")

OTTO_TYPES: dict[str, EventType] = {
    "clicks": "click",
    "carts": "add_to_cart",
    "orders": "purchase",
}
TAOBAO_TYPES: dict[str, EventType] = {
    "pv": "view",
    "cart": "add_to_cart",
    "buy": "purchase",
}
# Behaviours that are valid in the dataset but have no event type of ours.
TAOBAO_DROPPED = frozenset({"fav"})

_GZIP_MAGIC = b"\x1f\x8b"


def movielens_event_type(rating: float) -> EventType:
    """Map an explicit 0.5-5 star rating onto an event type (see module doc)."""
    if rating >= 5.0:
        return "purchase"
    if rating >= 4.0:
        return "add_to_cart"
    if rating >= 3.0:
        return "click"
    return "view"


@dataclass(frozen=True)
class DatasetStats:
    """What one read of a dataset file saw.

    ``read`` counts source records (rows, or events inside JSONL sessions;
    blank lines are skipped, not counted), ``kept`` the events returned,
    ``dropped`` the rest by reason, so ``read == kept + sum(dropped.values())``.
    """

    path: Path
    fmt: str
    read: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    users: int = 0
    items: int = 0


def detect_format(path: str | Path) -> str:
    """Tell a dataset's format from its first non-blank line."""
    path = Path(path)
    with _open_text(path) as stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                return _format_of_line(path, number, line.strip())
    raise ValueError(f"{path}: the file is empty, there is no format to detect")


def read_events(
    path: str | Path,
    fmt: str | None = None,
    limit: int | None = None,
    *,
    fav_as: EventType | None = None,
) -> list[Event]:
    """Read a dataset file as contract events sorted by timestamp (stable).

    Parameters
    ----------
    path
        A dataset file, plain or gzip-compressed.
    fmt
        One of :data:`FORMATS`; detected from the file when None.
    limit
        Keep at most this many events: the first ``limit`` in file order,
        then sorted. None reads the whole file.
    fav_as
        Taobao only: the event type a ``fav`` line becomes; None drops it.
    """
    return read_events_with_stats(path, fmt, limit, fav_as=fav_as)[0]


def read_events_with_stats(
    path: str | Path,
    fmt: str | None = None,
    limit: int | None = None,
    *,
    fav_as: EventType | None = None,
) -> tuple[list[Event], DatasetStats]:
    """Like :func:`read_events`, also returning counts read, kept and dropped."""
    path = Path(path)
    if fmt is None:
        fmt = detect_format(path)
    if fmt not in _READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {FORMATS}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or at least 0, got {limit}")
    if fav_as is not None and fav_as not in EVENT_TYPES:
        raise ValueError(f"fav_as must be one of {EVENT_TYPES} or None, got {fav_as!r}")
    reader = _READERS[fmt]
    if fmt == "taobao" and fav_as is not None:
        reader = functools.partial(_read_taobao, fav_as=fav_as)

    with _open_text(path) as stream:
        events, read, dropped = reader(stream, path, limit)

    # list.sort is stable: same-millisecond events keep their file order.
    events.sort(key=attrgetter("timestamp"))
    stats = DatasetStats(
        path=path,
        fmt=fmt,
        read=read,
        kept=len(events),
        dropped=dict(dropped),
        users=len({event.user_id for event in events}),
        items=len({event.item_id for event in events}),
    )
    return events, stats


# --- reading ------------------------------------------------------------------

_Reader = Callable[[TextIO, Path, int | None], tuple[list[Event], int, Counter]]


def _open_text(path: Path) -> TextIO:
    """Open a text file, decompressing it when it starts with gzip's magic."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    # newline="" leaves CRLF to the csv module (MovieLens ends lines with CRLF);
    # utf-8-sig drops a byte-order mark some spreadsheet exports add.
    if compressed:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _format_of_line(path: Path, number: int, line: str) -> str:
    if line.startswith("{"):
        return "otto-jsonl"
    fields = tuple(part.strip() for part in line.split(","))
    if fields == MOVIELENS_HEADER:
        return "movielens"
    if fields == OTTO_HEADER:
        return "otto"
    if set(CSV_REQUIRED) <= set(fields):
        return "csv"
    if len(fields) == 5 and fields[3] in TAOBAO_TYPES.keys() | TAOBAO_DROPPED:
        return "taobao"
    raise ValueError(
        f"{path}, line {number}: cannot tell the dataset format from "
        f"{line[:80]!r}; pass fmt= one of {FORMATS}"
    )


def _stem(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return Path(name).stem


def _malformed(path: Path, line: int, fmt: str, exc: Exception) -> ValueError:
    return ValueError(f"{path}, line {line}: malformed {fmt} record: {exc}")


def _check_header(path: Path, reader: Iterator[list[str]], expected: tuple) -> None:
    header = tuple(field.strip() for field in next(reader, []))
    if header != expected:
        raise ValueError(
            f"{path}, line 1: expected the header {','.join(expected)!r}, "
            f"found {','.join(header)!r}"
        )


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


# A row parser turns one CSV row and its line number into an event, or into
# the reason (a str) why the row is dropped; it raises ValueError when the row
# is malformed.
_RowParser = Callable[[list[str], int], Event | str]


def _read_rows(
    reader: Iterator[list[str]],
    path: Path,
    fmt: str,
    limit: int | None,
    parse: _RowParser,
) -> tuple[list[Event], int, Counter]:
    events: list[Event] = []
    dropped: Counter = Counter()
    read = 0
    try:
        for row in reader:
            if not row:  # a blank line
                continue
            if limit is not None and len(events) >= limit:
                break
            read += 1
            parsed = parse(row, reader.line_num)
            if type(parsed) is str:
                dropped[parsed] += 1
            else:
                events.append(parsed)
    except ValueError as exc:  # msgspec.ValidationError is one too
        raise _malformed(path, reader.line_num, fmt, exc) from exc
    return events, read, dropped


def _read_movielens(
    stream: TextIO, path: Path, limit: int | None
) -> tuple[list[Event], int, Counter]:
    reader = csv.reader(stream)
    _check_header(path, reader, MOVIELENS_HEADER)
    stem = _stem(path)

    def parse(row: list[str], line: int) -> Event:
        user, item, rating, seconds = row
        stars, ms = float(rating), int(seconds) * 1000
        _require(bool(user and item), "empty userId or movieId")
        _require(0.0 < stars <= 5.0, f"rating {rating} outside 0.5-5")
        _require(ms >= 0, f"negative timestamp {seconds}")
        return Event(f"{stem}:{line}", user, item, movielens_event_type(stars), ms)

    return _read_rows(reader, path, "movielens", limit, parse)


def _read_otto_csv(
    stream: TextIO, path: Path, limit: int | None
) -> tuple[list[Event], int, Counter]:
    reader = csv.reader(stream)
    _check_header(path, reader, OTTO_HEADER)
    stem = _stem(path)

    def parse(row: list[str], line: int) -> Event:
        session, aid, ts, kind = row
        ms = int(ts)
        _require(bool(session and aid), "empty session or aid")
        _require(ms >= 0, f"negative timestamp {ts}")
        _require(kind in OTTO_TYPES, f"unknown type {kind!r}")
        return Event(f"{stem}:{line}", session, aid, OTTO_TYPES[kind], ms, session)

    return _read_rows(reader, path, "otto", limit, parse)


def _read_taobao(
    stream: TextIO, path: Path, limit: int | None, fav_as: EventType | None = None
) -> tuple[list[Event], int, Counter]:
    stem = _stem(path)
    types = TAOBAO_TYPES if fav_as is None else {**TAOBAO_TYPES, "fav": fav_as}

    def parse(row: list[str], line: int) -> Event | str:
        user, item, _category, behavior, seconds = row
        ms = int(seconds) * 1000
        _require(bool(user and item), "empty user_id or item_id")
        _require(ms >= 0, f"negative timestamp {seconds}")
        event_type = types.get(behavior)
        if event_type is not None:
            return Event(f"{stem}:{line}", user, item, event_type, ms)
        _require(behavior in TAOBAO_DROPPED, f"unknown behavior_type {behavior!r}")
        return behavior

    return _read_rows(csv.reader(stream), path, "taobao", limit, parse)


def _read_contract_csv(
    stream: TextIO, path: Path, limit: int | None
) -> tuple[list[Event], int, Counter]:
    reader = csv.reader(stream)
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in CSV_REQUIRED if name not in header]
    if missing:
        raise ValueError(f"{path}, line 1: the header lacks the columns {missing}")

    def parse(row: list[str], line: int) -> Event:
        _require(
            len(row) == len(header), f"{len(row)} fields, the header has {len(header)}"
        )
        # An empty optional cell means "not given", not an empty string.
        record = {name: value for name, value in zip(header, row, strict=True) if value}
        # strict=False lets msgspec parse "1700000000000" and "9.5" from text
        # while still enforcing every constraint of the contract.
        return msgspec.convert(record, Event, strict=False)

    return _read_rows(reader, path, "csv", limit, parse)


class _OttoEvent(msgspec.Struct):
    aid: int
    ts: Annotated[int, msgspec.Meta(ge=0)]
    type: Literal["clicks", "carts", "orders"]


class _OttoSession(msgspec.Struct):
    session: int
    events: list[_OttoEvent]


def _read_otto_jsonl(
    stream: TextIO, path: Path, limit: int | None
) -> tuple[list[Event], int, Counter]:
    decoder = msgspec.json.Decoder(_OttoSession)
    stem, events = _stem(path), []
    read = 0
    for line_number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            session = decoder.decode(line)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise _malformed(path, line_number, "otto-jsonl", exc) from exc
        user = str(session.session)
        for index, otto in enumerate(session.events):
            if limit is not None and len(events) >= limit:
                return events, read, Counter()
            read += 1
            event_id = f"{stem}:{line_number}:{index}"
            event_type = OTTO_TYPES[otto.type]
            events.append(
                Event(event_id, user, str(otto.aid), event_type, otto.ts, user)
            )
    return events, read, Counter()


_READERS: dict[str, _Reader] = {
    "movielens": _read_movielens,
    "otto": _read_otto_csv,
    "otto-jsonl": _read_otto_jsonl,
    "taobao": _read_taobao,
    "csv": _read_contract_csv,
}
