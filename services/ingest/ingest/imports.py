"""Bulk import of historical orders: CSV or NDJSON, one order line per row, streamed.

Rows are parsed as they arrive and copied (COPY) into a temporary table; one statement then groups
the lines into orders, derives each order's event id from its normalised lines, and stores and
queues every order not seen before. Memory stays bounded whatever the file's size.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError

from ingest.api import Writer, limits, settings_of, source_for
from ingest.schemas import (
    EARLIEST,
    IDENTIFIER,
    ImportRejection,
    ImportReport,
    Limits,
    bounded_money,
)
from ingest.service import COUNT_STORED, store_statement
from shared.db import PgDep
from shared.errors import FieldError, as_validation_errors
from shared.money import decimal_places, is_currency, minor_unit, parse_money
from shared.topics import PURCHASES

Format = Literal["csv", "ndjson"]
REQUIRED = ("order_id", "customer_id", "occurred_at", "currency", "sku", "quantity", "unit_price")
OPTIONAL = ("name", "category", "channel", "store_id")
FIELDS = REQUIRED + OPTIONAL
CHANNEL = re.compile(r"[a-z0-9_.-]{1,32}")
# A staged line carries its item as JSON and its normalised text (hashed into the order's event id),
# built here where the values are at hand, so PostgreSQL only groups and concatenates.
COLUMNS = (
    "line_no", "rejected", "order_id", "customer_id", "occurred_at", "currency", "places", "channel", "store_id",
    "amount", "item", "normalised",
)  # fmt: skip
Record = tuple[Any, ...]

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
    _times: dict[str, tuple[datetime, str] | str] = field(default_factory=dict)
    _prices: dict[tuple[str, int], tuple[Decimal, str] | str] = field(default_factory=dict)
    _quantities: dict[str, int | None] = field(default_factory=dict)

    def record(self, line_no: int, row: Row) -> tuple[Record, list[FieldError]]:
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
            return (line_no, True, order_id, *([None] * 9)), errors
        assert occurred_at is not None and price is not None and quantity is not None
        moment, utc = occurred_at
        unit_price, price_text = price
        item = orjson.dumps(
            {"sku": sku, "name": name, "category": category, "quantity": quantity, "unit_price": price_text}
        )
        normalised = "|".join(
            (order_id or "", customer_id or "", currency, utc, sku or "", str(quantity), price_text, name or "",
             category or "", channel, store_id or "")
        )  # fmt: skip
        values = (moment, currency, places, channel, store_id, unit_price * quantity, item.decode(), normalised)
        return (line_no, False, order_id, customer_id, *values), []

    def _time(self, value: Any, errors: list[FieldError]) -> tuple[datetime, str] | None:
        """The time and its UTC ISO text, or None with the error noted."""
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

    def _parse_time(self, value: str) -> tuple[datetime, str] | str:
        """The time and its UTC ISO text, or why it is refused."""
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return "must be an ISO 8601 time with a zone"
        if moment.tzinfo is None:
            return "must have a time zone"
        if not EARLIEST <= moment <= self.limits.now + self.limits.max_future_skew:
            return "must be after 1900 and not in the future"
        return moment, moment.astimezone(UTC).isoformat().replace("+00:00", "Z")

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

    def feed(self, chunk: bytes, *, final: bool = False) -> Iterator[tuple[int, Row | str]]:
        """(line number, the row's values, or why the line cannot be read) for each complete record."""
        lines = (self._partial + self._decoder.decode(chunk, final=final)).splitlines(keepends=True)
        self._partial = "" if final or not lines or lines[-1].endswith(("\n", "\r")) else lines.pop()
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
                continue
            if not any(cell.strip() for cell in row):
                continue
            width = len(row)
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


@dataclass
class ImportRun:
    """One import's progress: rows waiting for COPY, and what was rejected."""

    check: LineCheck
    max_reported: int
    lines: int = 0
    rejected_lines: int = 0
    rejected: list[ImportRejection] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    def add(self, line_no: int, row: Row | str) -> None:
        self.lines += 1
        if isinstance(row, str):  # the line could not be read at all: why
            record: Record = (line_no, True, *([None] * 10))
            errors = [FieldError(field="line", message=row, type="line_invalid")]
        else:
            record, errors = self.check.record(line_no, row)
        self.records.append(record)
        if errors:
            self.rejected_lines += 1
            if len(self.rejected) < self.max_reported:
                self.rejected.append(ImportRejection(line=line_no, errors=errors))

    def take(self) -> list[Record]:
        records, self.records = self.records, []
        return records


_CREATE_STAGING = """
    CREATE TEMP TABLE {staging} (
        line_no bigint, rejected boolean, order_id text, customer_id text, occurred_at timestamptz, currency text,
        places int, channel text, store_id text, amount numeric, item text, normalised text
    ) ON COMMIT DROP
"""
_UTC_ISO = """to_char(min(occurred_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
# One row per order, its purchase.completed data built as JSON text. Event id = hash of the order's
# normalised lines (in any order in the file): a re-run finds it. Lines of an order that disagree
# on customer or currency skip it (rejected lines have neither, so min/max skip them).
_GROUP_ORDERS = f"""
    CREATE TEMP TABLE {{orders}} ON COMMIT DROP AS
    SELECT *, gen_random_uuid()::text AS envelope_id, skipped_line OR disagreeing AS skipped,
        EXISTS (SELECT 1 FROM ingested_events e WHERE e.order_id = grouped.order_id AND e.kind = 'purchase') AS known,
        json_build_object('event_id', event_id, 'order_id', order_id, 'customer_id', customer_id,
            'occurred_at', occurred, 'currency', currency, 'channel', channel, 'store_id', store_id,
            'items', CAST(items AS json), 'total', total)::text AS data
    FROM (
        SELECT order_id, min(customer_id) AS customer_id, min(currency) AS currency, min(occurred_at) AS occurred_at,
            {_UTC_ISO} AS occurred, min(channel) AS channel, min(store_id) AS store_id,
            bool_or(rejected) AS skipped_line,
            coalesce(min(customer_id) <> max(customer_id) OR min(currency) <> max(currency), false) AS disagreeing,
            min(line_no) FILTER (WHERE NOT rejected) AS first_good_line,
            '[' || string_agg(item, ',' ORDER BY line_no) || ']' AS items,
            round(sum(amount), min(places))::text AS total,
            'import-' || md5(string_agg(normalised, E'\\n' ORDER BY normalised)) AS event_id
        FROM {{staging}} WHERE order_id IS NOT NULL GROUP BY order_id
    ) grouped
"""
_COUNT_ORDERS = "SELECT count(*), count(*) FILTER (WHERE skipped) FROM {orders}"
_DISAGREEING_ORDERS = (
    "SELECT order_id, first_good_line FROM {orders} WHERE disagreeing ORDER BY first_good_line LIMIT $1"
)
_ENVELOPE = (
    """'{"specversion":"1.0","id":"' || envelope_id || '","source":"cx.ingest","type":"purchase.completed",'"""
    """ || '"time":"' || occurred || '","subject":' || to_json(customer_id)::text"""
    """ || ',"datacontenttype":"application/json","data":' || data || '}'"""
)
# The good orders no event has named yet (imported before, or sent live), as store_statement() rows,
# stored and queued in time order. `known` is a column (not a NOT EXISTS here) so the planner
# knows how many rows the store joins: misjudged as one, it picks a nested loop, quadratic.
_NEW_ORDERS = f"""
    SELECT event_id, 'purchase' AS kind, customer_id AS customer_key, order_id, envelope_id, occurred_at,
        '{PURCHASES}' AS topic, data AS payload, {_ENVELOPE} AS message, occurred_at AS position
    FROM {{orders}} WHERE NOT skipped AND NOT known
"""


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
    staging, orders = f"import_lines_{name}", f"import_orders_{name}"
    await connection.execute(_CREATE_STAGING.replace("{staging}", staging))
    await connection.execute(f"SET LOCAL work_mem = '{int(work_mem_mb)}MB'")  # sorts by order in memory
    rows = CsvRows(mapping) if file_format == "csv" else NdjsonRows(mapping)
    run = ImportRun(LineCheck(limits), max_reported)
    # PostgreSQL stores one COPY while the next lines are parsed.
    copying: asyncio.Task[None] | None = None
    async for chunk in chunks:
        for line_no, row in rows.feed(chunk):
            run.add(line_no, row)
        if len(run.records) >= copy_rows:
            if copying is not None:
                await copying
            copying = asyncio.create_task(_copy(connection, staging, run.take()))
        await asyncio.sleep(0)  # let the COPY send what it has
    for line_no, row in rows.feed(b"", final=True):
        run.add(line_no, row)
    if copying is not None:
        await copying
    await _copy(connection, staging, run.take())
    await connection.execute(_GROUP_ORDERS.replace("{orders}", orders).replace("{staging}", staging))
    await connection.execute(f"ANALYZE {orders}")  # sizes for the store's joins
    room = max(0, max_reported - len(run.rejected))
    for order_id, line_no in await connection.fetch(_DISAGREEING_ORDERS.replace("{orders}", orders), room):
        message = f"lines of order {order_id} disagree on customer_id or currency"
        run.rejected.append(ImportRejection(line=line_no, errors=[FieldError(field="order_id", message=message)]))
    found, skipped = await connection.fetchrow(_COUNT_ORDERS.replace("{orders}", orders))
    imported = await connection.fetchval(
        store_statement(_NEW_ORDERS.replace("{orders}", orders), answer=COUNT_STORED), source
    )
    return ImportReport(
        lines=run.lines,
        orders=found,
        imported=imported,
        duplicates=found - skipped - imported,
        rejected_lines=run.rejected_lines,
        skipped_orders=skipped,
        rejected=sorted(run.rejected, key=lambda r: r.line),
    )


async def _copy(connection: asyncpg.Connection, staging: str, records: list[Record]) -> None:
    if records:
        await connection.copy_records_to_table(staging, records=records, columns=COLUMNS)


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
