"""Bulk import of historical orders: CSV or NDJSON, one order line per row, streamed.

Rows are parsed and checked as they arrive and grouped into orders chunk by chunk; each chunk's
orders are copied (COPY) to PostgreSQL, which stores and queues the new ones while the next chunk
is read. An order whose lines come in several chunks is taken back and grouped again from all its
lines at the end. One transaction: nothing is stored or queued unless the whole import is. Memory
stays bounded whatever the file's size.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import hashlib
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError

from ingest.api import Writer, limits, settings_of, source_for
from ingest.events import envelope_id
from ingest.schemas import (
    EARLIEST,
    IDENTIFIER,
    QUANTUM,
    ImportRejection,
    ImportReport,
    Limits,
    bounded_money,
)
from shared.db import PgDep
from shared.errors import FieldError, as_validation_errors
from shared.money import decimal_places, is_currency, minor_unit, parse_money
from shared.topics import PURCHASES

Format = Literal["csv", "ndjson"]
REQUIRED = ("order_id", "customer_id", "occurred_at", "currency", "sku", "quantity", "unit_price")
OPTIONAL = ("name", "category", "channel", "store_id")
FIELDS = REQUIRED + OPTIONAL
CHANNEL = re.compile(r"[a-z0-9_.-]{1,32}")
# An order's part: its lines read since the last chunk was stored (the whole order, unless its lines
# go on in a later chunk), as copied to PostgreSQL. Its event id and data are those of the order
# if the part is the whole order (else PostgreSQL groups the parts again, from the total, the data's
# items and the normalised lines: a JSON list, cheaper to copy than an array).
PART_COLUMNS = (
    "first_line", "order_id", "customer_id", "currency", "occurred_at", "occurred", "channel", "store_id",
    "rejected", "disagreeing", "first_good_line", "total", "normalised", "event_id", "envelope_id", "data",
)  # fmt: skip
Record = tuple[Any, ...]
# A checked line: line_no, rejected, order_id, customer_id, occurred_at, its UTC text as stored,
# currency, places, channel, store_id, amount, item (JSON), normalised text (hashed into the event id).
Line = tuple[Any, ...]

router = APIRouter(prefix="/v1", tags=["ingest"])


class MappingError(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


def parse_mapping(specs: list[str]) -> dict[str, str]:
    """`customer_id=CustomerID` pairs: our field = the file's column (default: the same name)."""
    mapping: dict[str, str] = {}
    errors: list[FieldError] = []
    for spec in specs:
        target, sep, column = spec.partition("=")
        if not sep or target not in FIELDS or not column:
            errors.append(
                FieldError(field="map", message=f"{spec!r}: use FIELD=COLUMN, FIELD one of {', '.join(FIELDS)}")
            )
        mapping[target] = column
    if errors:
        raise MappingError(errors)
    return {name: mapping.get(name, name) for name in FIELDS}


Row = tuple[Any, ...]  # a line's values in FIELDS order (None where the file has no such column)
(
    _ORDER_ID,
    _CUSTOMER_ID,
    _OCCURRED_AT,
    _CURRENCY,
    _SKU,
    _QUANTITY,
    _UNIT_PRICE,
    _NAME,
    _CATEGORY,
    _CHANNEL,
    _STORE_ID,
) = range(len(FIELDS))
_CACHE_LIMIT = 50_000


@dataclass
class LineCheck:
    """Turns one mapped row into a COPY record, or errors naming the fields.

    Times, prices, quantities and currencies repeat across lines: each distinct text is checked
    once (the caches are bounded).
    """

    limits: Limits
    _times: dict[str, tuple[datetime, str, str] | str] = field(default_factory=dict)
    _prices: dict[tuple[str, int], tuple[Decimal, str] | str] = field(default_factory=dict)
    _quantities: dict[str, int | None] = field(default_factory=dict)

    def line(self, line_no: int, row: Row) -> tuple[Line, list[FieldError]]:
        errors: list[FieldError] = []
        order_id = _identifier(row[_ORDER_ID], "order_id", errors)
        customer_id = _identifier(row[_CUSTOMER_ID], "customer_id", errors)
        sku = _identifier(row[_SKU], "sku", errors)
        store_id = _identifier(row[_STORE_ID], "store_id", errors, required=False)
        occurred_at = self._time(row[_OCCURRED_AT], errors)
        currency = _text(row[_CURRENCY])
        places = minor_unit(currency)
        if not currency or not is_currency(currency):
            errors.append(FieldError(field="currency", message=f"{currency!r} is not an ISO 4217 currency code"))
        quantity = self._quantity(row[_QUANTITY], errors)
        price = self._price(row[_UNIT_PRICE], places, errors)
        channel = _text(row[_CHANNEL]) or "web"
        if channel != "web" and not CHANNEL.fullmatch(channel):
            errors.append(FieldError(field="channel", message="must be 1-32 characters of a-z 0-9 _ . -"))
        name, category = _text(row[_NAME])[:300] or None, _text(row[_CATEGORY])[:300] or None
        if (name and "\x00" in name) or (category and "\x00" in category):
            errors.append(FieldError(field="name", message="name and category must not contain NUL characters"))
        if errors:
            return (line_no, True, order_id), errors
        assert occurred_at is not None and price is not None and quantity is not None
        moment, utc, stamp = occurred_at
        unit_price, price_text = price
        item = orjson.dumps(
            {"sku": sku, "name": name, "category": category, "quantity": quantity, "unit_price": price_text}
        )
        normalised = "|".join(
            (order_id or "", customer_id or "", currency, utc, sku or "", str(quantity), price_text, name or "",
             category or "", channel, store_id or "")
        )  # fmt: skip
        values = (moment, stamp, currency, places, channel, store_id, unit_price * quantity, item, normalised)
        return (line_no, False, order_id, customer_id, *values), []

    def _time(self, value: Any, errors: list[FieldError]) -> tuple[datetime, str, str] | None:
        """The time, its UTC ISO text and its text as stored, or None with the error noted."""
        text_value = _text(value)
        known = self._times.get(text_value)  # lines of one order, and busy hours, repeat their times
        if known is None:
            known = self._parse_time(text_value)
            if len(self._times) > _CACHE_LIMIT:
                self._times.clear()
            self._times[text_value] = known
        if isinstance(known, str):
            errors.append(FieldError(field="occurred_at", message=known))
            return None
        return known

    def _parse_time(self, value: str) -> tuple[datetime, str, str] | str:
        """The time, its UTC ISO text (hashed) and its text as stored (microseconds always), or why it is refused."""
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return "must be an ISO 8601 time with a zone"
        if moment.tzinfo is None:
            return "must have a time zone"
        if not EARLIEST <= moment <= self.limits.now + self.limits.max_future_skew:
            return "must be after 1900 and not in the future"
        utc = moment.astimezone(UTC)
        return moment, utc.isoformat().replace("+00:00", "Z"), utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _quantity(self, value: Any, errors: list[FieldError]) -> int | None:
        if type(value) is str:
            if value in self._quantities:
                quantity = self._quantities[value]
            else:
                quantity = self._quantities[value] = _parse_quantity(value)
                if len(self._quantities) > _CACHE_LIMIT:
                    self._quantities.clear()
        else:
            quantity = _parse_quantity(value)
        if quantity is None:
            errors.append(FieldError(field="quantity", message="must be a whole number from 1 to 1,000,000"))
        return quantity

    def _price(self, value: Any, places: int, errors: list[FieldError]) -> tuple[Decimal, str] | None:
        """The price and its text with the currency's decimals, or None with the error noted."""
        if type(value) is str:
            key = (value, places)
            known = self._prices.get(key)
            if known is None:
                known = self._prices[key] = _parse_price(value, places)
                if len(self._prices) > _CACHE_LIMIT:
                    self._prices.clear()
        else:
            known = _parse_price(value, places)
        if isinstance(known, str):
            errors.append(FieldError(field="unit_price", message=known))
            return None
        return known


def _identifier(value: Any, name: str, errors: list[FieldError], *, required: bool = True) -> str | None:
    identifier = _text(value)
    if not identifier:
        if required:
            errors.append(FieldError(field=name, message="is required", type="missing"))
        return None
    if not IDENTIFIER.fullmatch(identifier):
        errors.append(FieldError(field=name, message="must be 1-128 letters, digits and ._:@/+=#-"))
        return None
    return identifier


def _parse_quantity(value: Any) -> int | None:
    try:
        quantity = value if isinstance(value, int) and not isinstance(value, bool) else int(_text(value))
    except ValueError:
        return None
    return quantity if 0 < quantity <= 1_000_000 else None


def _parse_price(value: Any, places: int) -> tuple[Decimal, str] | str:
    """The price and its text, or why it is refused."""
    try:
        price = bounded_money(parse_money(value if value is not None else ""))
    except ValueError as error:
        return str(error)
    if price < 0 or decimal_places(price) > places:
        return f"must be ≥ 0 with at most {places} decimals"
    return price, f"{price:.{places}f}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else str(value)


class _LineQueue:
    """Lines for csv.reader; running dry ends the reader's pass, not the reader (it resumes)."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque()

    def __iter__(self) -> _LineQueue:
        return self

    def __next__(self) -> str:
        if not self.lines:
            raise StopIteration
        return self.lines.popleft()


class CsvRows:
    """Complete CSV records from byte chunks; a quoted field may span lines and chunks."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._partial = ""
        self._pending: list[str] = []
        self._quoted = False
        self._ready = _LineQueue()
        self._reader = csv.reader(self._ready)
        self._columns: list[int] | None = None  # per field of FIELDS, its column (-1: not in the file)
        self._width = 0  # the header's
        self._pick: Callable[[list[str | None]], Row] = tuple

    def feed(self, chunk: bytes, *, final: bool = False) -> Iterator[tuple[int, Row | str]]:
        """(line number, the row's values, or why the line cannot be read) for each complete record."""
        text = self._partial + self._decoder.decode(chunk, final=final)
        lines = text.splitlines(keepends=True)
        self._partial = "" if final or not lines or lines[-1].endswith(("\n", "\r")) else lines.pop()
        if not self._quoted and '"' not in text:  # no quoted field: every line is a whole record
            self._ready.lines.extend(lines)
            lines = []
        for line in lines:
            self._pending.append(line)
            self._quoted ^= line.count('"') % 2 == 1  # inside a quoted field until the quotes balance
            if not self._quoted or final:
                self._ready.lines.extend(self._pending)
                self._pending.clear()
        yield from self._rows()

    def _rows(self) -> Iterator[tuple[int, Row | str]]:
        while self._ready.lines:
            try:
                row = next(self._reader, None)
            except csv.Error as error:  # e.g. a field over the csv module's 128 KiB limit
                yield self._reader.line_num, f"is not readable CSV: {error}"
                continue
            if row is None:
                return
            if self._columns is None:
                self._columns = self._header(row)
                self._width = len(row)  # a missing column reads the None appended at this index
                self._pick = itemgetter(*(i if i >= 0 else self._width for i in self._columns))
                continue
            width = len(row)
            if width == self._width:
                if not "".join(row).strip():
                    continue
                row.append(None)  # type: ignore[arg-type]
                yield self._reader.line_num, self._pick(row)  # type: ignore[arg-type]
                continue
            if not "".join(row).strip():
                continue
            yield self._reader.line_num, tuple(row[i] if 0 <= i < width else None for i in self._columns)

    def _header(self, header: list[str]) -> list[int]:
        """Column positions by name: exact, else ignoring case."""
        names = [h.strip() for h in header]
        folded = [name.casefold() for name in names]
        columns: dict[str, int] = {}
        for f in FIELDS:
            column = self.mapping[f]
            if column in names:
                columns[f] = names.index(column)
            elif column.casefold() in folded:
                columns[f] = folded.index(column.casefold())
        missing = [f for f in REQUIRED if f not in columns]
        if missing:
            message = "column {!r} is not in the header"
            raise MappingError([FieldError(field=f"map.{f}", message=message.format(self.mapping[f])) for f in missing])
        return [columns.get(f, -1) for f in FIELDS]


class NdjsonRows:
    """One JSON object per line; keys mapped like CSV columns."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping
        self._partial = b""
        self._line_no = 0

    def feed(self, chunk: bytes, *, final: bool = False) -> Iterator[tuple[int, Row | str]]:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = b"" if final else lines.pop()
        for line in lines:
            self._line_no += 1
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                yield self._line_no, "must be a JSON object"
                continue
            yield self._line_no, tuple(value.get(self.mapping[f]) for f in FIELDS)


def order_part(order_id: str, lines: list[Line]) -> Record:
    """One order's lines read since the last chunk was stored, grouped as PART_COLUMNS.

    As PostgreSQL groups parts (_MERGED): the earliest time, the least channel and store. The
    data's values need no JSON escaping: identifiers, codes and times; the items are JSON already.
    """
    good = [line for line in lines if not line[1]]
    rejected = len(good) < len(lines)
    if not good:
        nothing: Record = (None, None, None, None, None, None, True, False, None, "0", "[]", None)
        return (lines[0][0], order_id, *nothing, envelope_id(), None)
    first = earliest = good[0]
    _, _, _, customer_id, _, _, currency, places, channel, store_id, total, _, _ = first
    disagreeing = False
    for line in good[1:]:
        disagreeing |= line[3] != customer_id or line[6] != currency
        if line[4] < earliest[4]:
            earliest = line
        channel = min(channel, line[8])
        if line[9] is not None and (store_id is None or line[9] < store_id):
            store_id = line[9]
        total += line[10]
    occurred = earliest[5]
    items = b",".join([line[11] for line in good]).decode()
    normalised = sorted([line[12] for line in good])  # code point order: PostgreSQL's "C" collation
    total_text = str(total.quantize(QUANTUM[places]))
    event_id = data = None
    if not (rejected or disagreeing):
        event_id = "import-" + hashlib.md5("\n".join(normalised).encode()).hexdigest()
        store = "null" if store_id is None else f'"{store_id}"'
        data = (
            f'{{"event_id":"{event_id}","order_id":"{order_id}","customer_id":"{customer_id}",'
            f'"occurred_at":"{occurred}","currency":"{currency}","channel":"{channel}","store_id":{store},'
            f'"items":[{items}],"total":"{total_text}"}}'
        )
    return (
        lines[0][0], order_id, customer_id, currency, earliest[4], occurred, channel, store_id, rejected,
        disagreeing, first[0], total_text, orjson.dumps(normalised).decode(), event_id, envelope_id(), data,
    )  # fmt: skip


@dataclass
class ImportRun:
    """One import's progress: the lines of the current chunk by order, and what was rejected."""

    check: LineCheck
    max_reported: int
    lines: int = 0
    rejected_lines: int = 0
    rejected: list[ImportRejection] = field(default_factory=list)
    orders: dict[str, list[Line]] = field(default_factory=dict)
    pending: int = 0  # lines in orders
    last_order: str | None = None

    def add(self, line_no: int, row: Row | str) -> None:
        self.lines += 1
        if isinstance(row, str):  # the line could not be read at all: why
            errors = [FieldError(field="line", message=row, type="line_invalid")]
        else:
            line, errors = self.check.line(line_no, row)
            order_id = line[2]
            if order_id is not None:
                lines = self.orders.get(order_id)
                if lines is None:
                    self.orders[order_id] = [line]
                else:
                    lines.append(line)
                self.last_order = order_id
                self.pending += 1
        if errors:
            self.rejected_lines += 1
            if len(self.rejected) < self.max_reported:
                self.rejected.append(ImportRejection(line=line_no, errors=errors))

    def take(self, *, final: bool = False) -> list[Record]:
        """The order parts to store now: all but the last line's order, which may go on in the next chunk.

        Unless final, or that order's lines are all there are (a chunk's worth: it is then stored in parts).
        """
        held = None
        if not final and len(self.orders) > 1 and self.last_order is not None:
            held = self.orders.pop(self.last_order, None)
        records = [order_part(order_id, lines) for order_id, lines in self.orders.items()]
        self.orders = {self.last_order: held} if held is not None and self.last_order is not None else {}
        self.pending = len(held) if held is not None else 0
        return records


_PARTS_TABLE = """
    CREATE TEMP TABLE {parts} (
        first_line bigint, order_id text, customer_id text, currency text, occurred_at timestamptz,
        occurred text, channel text, store_id text, rejected boolean, disagreeing boolean, first_good_line bigint,
        total text, normalised text, event_id text, envelope_id text, data text
    ) ON COMMIT DROP
"""
# One row per order_id of the import: its first part's event id and the envelope id it was stored
# with. `spans`: more parts came in later chunks, so the order is grouped again at the end.
_ORDERS_TABLE = """
    CREATE TEMP TABLE {orders} (
        order_id text PRIMARY KEY, event_id text, envelope_id text, skipped boolean, disagreeing boolean,
        first_good_line bigint, spans boolean NOT NULL DEFAULT false
    ) ON COMMIT DROP
"""
# `known`: ingest already has a purchase of that order id (sent live, or imported before). A scalar
# subquery, so one index probe per order: as EXISTS the planner may hash every stored purchase, per chunk.
_KNOWN = """coalesce((SELECT true FROM ingested_events e
    WHERE e.order_id = {rows}.order_id AND e.kind = 'purchase' LIMIT 1), false)"""
_ENVELOPE = (
    """'{"specversion":"1.0","id":"' || envelope_id || '","source":"cx.ingest","type":"purchase.completed",'"""
    """ || '"time":"' || occurred || '","subject":"' || customer_id || '"'"""
    """ || ',"datacontenttype":"application/json","data":' || data || '}'"""
)
# Stores the orders of `new` (event_id, customer_id, order_id, envelope_id, occurred_at, occurred,
# data) not stored before, and queues exactly those, in time order: the answer is how many, and
# the outbox ids they got (to find them again should one be taken back).
_STORE_NEW = f"""
    stored AS (
        INSERT INTO ingested_events (source, event_id, kind, customer_key, order_id, envelope_id, occurred_at, payload)
        SELECT $1, event_id, 'purchase', customer_id, order_id, envelope_id, occurred_at, CAST(data AS jsonb)
        FROM new ORDER BY occurred_at
        ON CONFLICT ON CONSTRAINT ingested_events_source_event_id DO NOTHING
        RETURNING envelope_id
    ), queued AS (
        INSERT INTO outbox (event_id, topic, key, payload)
        SELECT envelope_id, '{PURCHASES}', customer_id, {_ENVELOPE}
        FROM new WHERE envelope_id IN (SELECT envelope_id FROM stored) ORDER BY occurred_at
        RETURNING id
    )
    SELECT count(*), min(id), max(id) FROM queued
"""
# One chunk's parts ({batch}, one per order id; a child of {parts}, so kept for the end): an order
# id no earlier chunk had is stored unless known. One an earlier chunk had is only marked `spans`
# (the unique index finds it: no join whose plan could go wrong).
_STORE_CHUNK = f"""
    WITH chunk AS (
        INSERT INTO {{orders}} AS o (order_id, event_id, envelope_id, skipped, disagreeing, first_good_line)
        SELECT order_id, event_id, envelope_id, rejected OR disagreeing, disagreeing, first_good_line FROM {{batch}}
        ON CONFLICT (order_id) DO UPDATE SET spans = true
        RETURNING o.order_id, o.skipped, o.spans
    ), new AS (
        SELECT b.* FROM {{batch}} b JOIN chunk c USING (order_id)
        WHERE NOT c.spans AND NOT c.skipped AND NOT {_KNOWN.format(rows="b")}
    ),
    {_STORE_NEW}
"""
_HAS_SPANNING = "SELECT EXISTS (SELECT 1 FROM {orders} WHERE spans)"
# An order whose lines came in several chunks: its first part (if stored) is taken back, stored
# row and queued message (found among this import's outbox ids, $1-$2), then the order is grouped
# from all its parts (as order_part groups lines) and stored whole, with its first part's envelope id.
_UNSTORE_SPANNING = """
    DELETE FROM ingested_events WHERE source = $1
        AND event_id = ANY(ARRAY(SELECT event_id FROM {orders} WHERE spans))
        AND envelope_id = ANY(ARRAY(SELECT envelope_id FROM {orders} WHERE spans))
"""
_UNQUEUE_SPANNING = """
    DELETE FROM outbox WHERE id BETWEEN $1 AND $2
        AND event_id = ANY(ARRAY(SELECT envelope_id FROM {orders} WHERE spans))
"""
_UTC_ISO = """to_char(min(occurred_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_MERGED = f"""
    SELECT order_id, customer_id, occurred_at, occurred, first_good_line, disagreeing,
        rejected OR disagreeing AS skipped, {_KNOWN.format(rows="grouped")} AS known, event_id, envelope_id,
        '{{"event_id":"' || event_id || '","order_id":"' || order_id || '","customer_id":"' || customer_id
            || '","occurred_at":"' || occurred || '","currency":"' || currency || '","channel":"' || channel
            || '","store_id":' || coalesce('"' || store_id || '"', 'null') || ',"items":[' || items
            || '],"total":"' || total || '"}}' AS data
    FROM (
        SELECT order_id, min(customer_id) AS customer_id, min(currency) AS currency, min(occurred_at) AS occurred_at,
            {_UTC_ISO} AS occurred, min(channel) AS channel, min(store_id) AS store_id, bool_or(rejected) AS rejected,
            coalesce(bool_or(disagreeing) OR min(customer_id) <> max(customer_id) OR min(currency) <> max(currency),
                false) AS disagreeing,
            min(first_good_line) AS first_good_line,
            string_agg(substr(items, 2, length(items) - 2), ',' ORDER BY first_line) AS items,
            (array_agg(envelope_id ORDER BY first_line))[1] AS envelope_id,
            sum(CAST(total AS numeric))::text AS total
        FROM spanning, LATERAL (SELECT CAST(CAST(data AS json) -> 'items' AS text) AS items) part
        GROUP BY order_id
    ) grouped LEFT JOIN (
        SELECT order_id, 'import-' || md5(string_agg(n, E'\\n' ORDER BY n COLLATE "C")) AS event_id
        FROM spanning, json_array_elements_text(CAST(normalised AS json)) n GROUP BY order_id
    ) hashed USING (order_id)
"""
_MERGE_SPANNING = f"""
    WITH spanning AS (SELECT * FROM {{parts}} WHERE order_id IN (SELECT order_id FROM {{orders}} WHERE spans)),
    merged AS ({_MERGED}), updated AS (
        UPDATE {{orders}} o SET (event_id, envelope_id, skipped, disagreeing, first_good_line) =
            (m.event_id, m.envelope_id, m.skipped, m.disagreeing, m.first_good_line)
        FROM merged m WHERE o.order_id = m.order_id
    ), new AS (SELECT * FROM merged WHERE NOT skipped AND NOT known),
    {_STORE_NEW}
"""
_COUNT_ORDERS = "SELECT count(*), count(*) FILTER (WHERE skipped) FROM {orders}"
_DISAGREEING_ORDERS = (
    "SELECT order_id, first_good_line FROM {orders} WHERE disagreeing ORDER BY first_good_line LIMIT $1"
)


@dataclass
class Queued:
    """How many orders an import stored and queued, and the outbox ids they got (between first and last)."""

    count: int = 0
    first_id: int = 0
    last_id: int = 0

    def add(self, count: int, first_id: int | None, last_id: int | None) -> None:
        if count and first_id is not None and last_id is not None:
            self.first_id = min(self.first_id or first_id, first_id)
            self.last_id = max(self.last_id, last_id)
        self.count += count


# Parsing yields to the event loop this often while a chunk is being stored: each of the store's
# steps (a COPY buffer, a statement, an answer) waits for a turn of the loop.
_YIELD_EVERY_LINES = 200


async def import_orders(
    connection: asyncpg.Connection,
    *,
    source: str,
    chunks: AsyncIterator[bytes],
    file_format: Format,
    mapping: dict[str, str],
    limits: Limits,
    copy_rows: int = 20_000,
    max_reported: int = 1000,
    work_mem_mb: int = 256,
) -> ImportReport:
    """Import every order of the stream not seen before; raises MappingError when columns are missing.

    Call in a transaction: the staging tables live until it ends, and the import is all or nothing.
    """
    # Fresh names per import: asyncpg caches statements, and a cached one may name a dropped table.
    name = uuid.uuid4().hex[:16]
    tables = {"{parts}": f"import_parts_{name}", "{orders}": f"import_orders_{name}"}

    def sql(statement: str) -> str:
        for placeholder, table in tables.items():
            statement = statement.replace(placeholder, table)
        return statement

    await connection.execute(sql(_PARTS_TABLE))
    await connection.execute(sql(_ORDERS_TABLE))
    await connection.execute(f"SET LOCAL work_mem = '{int(work_mem_mb)}MB'")  # sorts by order in memory
    # Joins of a statement's own rows (a CTE the planner cannot size) hashed, never a nested loop:
    # misjudged as one row, a nested loop is quadratic.
    await connection.execute("SET LOCAL enable_nestloop = off")
    rows = CsvRows(mapping) if file_format == "csv" else NdjsonRows(mapping)
    run = ImportRun(LineCheck(limits), max_reported)
    queued = Queued()
    stored_chunks = 0

    async def store_chunk(records: list[Record]) -> None:
        """A table of its own per chunk: read alone now, with the others (as {parts}) at the end."""
        nonlocal stored_chunks
        if records:
            stored_chunks += 1
            batch = f"{tables['{parts}']}_{stored_chunks}"
            await connection.execute(sql(f"CREATE TEMP TABLE {batch} () INHERITS ({{parts}}) ON COMMIT DROP"))
            await connection.copy_records_to_table(batch, records=records, columns=PART_COLUMNS)
            queued.add(*await connection.fetchrow(sql(_STORE_CHUNK.replace("{batch}", batch)), source))

    # PostgreSQL stores one chunk's orders while the next lines are parsed.
    storing: asyncio.Task[None] | None = None
    try:
        async for chunk in chunks:
            for count, (line_no, row) in enumerate(rows.feed(chunk), 1):
                run.add(line_no, row)
                if count % _YIELD_EVERY_LINES == 0 and storing is not None and not storing.done():
                    await asyncio.sleep(0)  # the chunk being stored sends its next COPY buffer or statement
            if run.pending >= copy_rows:
                if storing is not None:
                    await storing
                storing = asyncio.create_task(store_chunk(run.take()))
            await asyncio.sleep(0)  # let the chunk's statements go out
        for line_no, row in rows.feed(b"", final=True):
            run.add(line_no, row)
    finally:
        if storing is not None:  # the connection is free again before the transaction ends
            await asyncio.gather(storing, return_exceptions=True)
    if storing is not None:
        await storing  # its error, if any
    await store_chunk(run.take(final=True))
    if await connection.fetchval(sql(_HAS_SPANNING)):
        await connection.execute(sql(_UNSTORE_SPANNING), source)
        if queued.count:
            status = await connection.execute(sql(_UNQUEUE_SPANNING), queued.first_id, queued.last_id)
            queued.count -= int(status.split()[-1])
        queued.add(*await connection.fetchrow(sql(_MERGE_SPANNING), source))
    room = max(0, max_reported - len(run.rejected))
    for order_id, line_no in await connection.fetch(sql(_DISAGREEING_ORDERS), room):
        message = f"lines of order {order_id} disagree on customer_id or currency"
        run.rejected.append(ImportRejection(line=line_no, errors=[FieldError(field="order_id", message=message)]))
    found, skipped = await connection.fetchrow(sql(_COUNT_ORDERS))
    return ImportReport(
        lines=run.lines,
        orders=found,
        imported=queued.count,
        duplicates=found - skipped - queued.count,
        rejected_lines=run.rejected_lines,
        skipped_orders=skipped,
        rejected=sorted(run.rejected, key=lambda r: r.line),
    )


@router.post("/imports", response_model=ImportReport)
async def post_import(
    request: Request,
    principal: Writer,
    connection: PgDep,
    format: Annotated[Format, Query(description="csv (with a header line) or ndjson")] = "csv",
    map: Annotated[list[str], Query(description="FIELD=COLUMN, repeatable: customer_id=CustomerID")] = [],  # noqa: B006
) -> ImportReport:
    """Stream a file of order lines (any size) as the request body; rows of one order_id form one order."""
    settings = settings_of(request)
    try:
        mapping = parse_mapping(map)
        source = await source_for(request, connection, principal)
        async with connection.transaction():
            return await import_orders(
                connection,
                source=source,
                chunks=request.stream(),
                file_format=format,
                mapping=mapping,
                limits=limits(settings),
                copy_rows=settings.import_copy_rows,
                max_reported=settings.import_max_reported_errors,
                work_mem_mb=settings.import_work_mem_mb,
            )
    except MappingError as error:
        raise RequestValidationError(as_validation_errors(error.errors)) from error
