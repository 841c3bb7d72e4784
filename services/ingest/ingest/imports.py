"""Bulk import of historical orders: CSV or NDJSON, one order line per row, streamed.

Rows are parsed as they arrive and copied (COPY) into a temporary table; one statement then groups
the lines into orders, derives each order's event id from its normalised lines, and stores and
queues every order not seen before. Memory stays bounded whatever the file's size.
"""

from __future__ import annotations

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

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ingest.api import Writer, limits, settings_of, source_for
from ingest.schemas import (
    EARLIEST,
    IDENTIFIER,
    ImportRejection,
    ImportReport,
    Limits,
    bounded_money,
)
from shared.db import SessionDep
from shared.errors import FieldError, as_validation_errors
from shared.money import decimal_places, is_currency, minor_unit, parse_money

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
INVALID = "_invalid"  # a row that could not be read at all, with the reason

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


@dataclass
class LineCheck:
    """Turns one mapped row into a COPY record, or errors naming the fields."""

    limits: Limits
    _times: dict[str, tuple[datetime, str] | str] = field(default_factory=dict)

    def record(self, line_no: int, row: dict[str, Any]) -> tuple[Record, list[FieldError]]:
        errors: list[FieldError] = []
        order_id = self._identifier(row, "order_id", errors)
        customer_id = self._identifier(row, "customer_id", errors)
        sku = self._identifier(row, "sku", errors)
        store_id = self._identifier(row, "store_id", errors, required=False)
        occurred_at = self._time(row.get("occurred_at"), errors)
        currency = _text(row.get("currency"))
        places = minor_unit(currency or "")
        if not currency or not is_currency(currency):
            errors.append(FieldError(field="currency", message=f"{currency!r} is not an ISO 4217 currency code"))
        quantity = self._quantity(row.get("quantity"), errors)
        unit_price = self._price(row.get("unit_price"), places, errors)
        channel = _text(row.get("channel")) or "web"
        if not CHANNEL.fullmatch(channel):
            errors.append(FieldError(field="channel", message="must be 1-32 characters of a-z 0-9 _ . -"))
        name, category = _text(row.get("name"))[:300] or None, _text(row.get("category"))[:300] or None
        if "\x00" in f"{name}{category}":
            errors.append(FieldError(field="name", message="name and category must not contain NUL characters"))
        if errors:
            return (line_no, True, order_id, *([None] * 9)), errors
        assert occurred_at is not None and unit_price is not None and quantity is not None
        moment, utc = occurred_at
        price = f"{unit_price:.{places}f}"
        item = orjson.dumps({"sku": sku, "name": name, "category": category, "quantity": quantity, "unit_price": price})
        normalised = "|".join(
            (order_id or "", customer_id or "", currency, utc, sku or "", str(quantity), price, name or "",
             category or "", channel, store_id or "")
        )  # fmt: skip
        amount = unit_price * quantity
        values = (moment, currency, places, channel, store_id, amount, item.decode(), normalised)
        return (line_no, False, order_id, customer_id, *values), []

    @staticmethod
    def _identifier(row: dict[str, Any], name: str, errors: list[FieldError], *, required: bool = True) -> str | None:
        value = _text(row.get(name))
        if not value:
            if required:
                errors.append(FieldError(field=name, message="is required", type="missing"))
            return None
        if not IDENTIFIER.fullmatch(value):
            errors.append(FieldError(field=name, message="must be 1-128 letters, digits and ._:@/+=#-"))
            return None
        return value

    def _time(self, value: Any, errors: list[FieldError]) -> tuple[datetime, str] | None:
        """The time and its UTC ISO text, or None with the error noted."""
        text_value = _text(value)
        known = self._times.get(text_value)  # lines of one order, and busy hours, repeat their times
        if known is None:
            known = self._parse_time(text_value)
            if len(self._times) > 10_000:
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

    @staticmethod
    def _quantity(value: Any, errors: list[FieldError]) -> int | None:
        try:
            quantity = value if isinstance(value, int) and not isinstance(value, bool) else int(_text(value))
        except ValueError:
            quantity = 0
        if not 0 < quantity <= 1_000_000:
            errors.append(FieldError(field="quantity", message="must be a whole number from 1 to 1,000,000"))
            return None
        return quantity

    @staticmethod
    def _price(value: Any, places: int, errors: list[FieldError]) -> Decimal | None:
        try:
            price = bounded_money(parse_money(value if value is not None else ""))
        except ValueError as error:
            errors.append(FieldError(field="unit_price", message=str(error)))
            return None
        if price < 0 or decimal_places(price) > places:
            errors.append(FieldError(field="unit_price", message=f"must be ≥ 0 with at most {places} decimals"))
            return None
        return price


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
        self._columns: dict[str, int] | None = None

    def feed(self, chunk: bytes, *, final: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        lines = (self._partial + self._decoder.decode(chunk, final=final)).splitlines(keepends=True)
        self._partial = "" if final or not lines or lines[-1].endswith(("\n", "\r")) else lines.pop()
        for line in lines:
            self._pending.append(line)
            self._quoted ^= line.count('"') % 2 == 1  # inside a quoted field until the quotes balance
            if not self._quoted or final:
                self._ready.lines.extend(self._pending)
                self._pending.clear()
        yield from self._rows()

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        while self._ready.lines:
            try:
                row = next(self._reader, None)
            except csv.Error as error:  # e.g. a field over the csv module's 128 KiB limit
                yield self._reader.line_num, {INVALID: f"is not readable CSV: {error}"}
                continue
            if row is None:
                return
            if self._columns is None:
                self._columns = self._header(row)
                continue
            if not any(cell.strip() for cell in row):
                continue
            yield self._reader.line_num, {f: row[i] if i < len(row) else None for f, i in self._columns.items()}

    def _header(self, header: list[str]) -> dict[str, int]:
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
        return columns


class NdjsonRows:
    """One JSON object per line; keys mapped like CSV columns."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping
        self._partial = b""
        self._line_no = 0

    def feed(self, chunk: bytes, *, final: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
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
                yield self._line_no, {INVALID: "must be a JSON object"}
                continue
            yield self._line_no, {f: value.get(column) for f, column in self.mapping.items()}


@dataclass
class ImportRun:
    """One import's progress: rows waiting for COPY, and what was rejected."""

    check: LineCheck
    max_reported: int
    staging: str  # the temporary table the lines are copied to
    lines: int = 0
    rejected_lines: int = 0
    rejected: list[ImportRejection] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    def add(self, line_no: int, row: dict[str, Any]) -> None:
        self.lines += 1
        if INVALID in row:
            record: Record = (line_no, True, *([None] * 10))
            errors = [FieldError(field="line", message=row[INVALID], type="line_invalid")]
        else:
            record, errors = self.check.record(line_no, row)
        self.records.append(record)
        if errors:
            self.rejected_lines += 1
            if len(self.rejected) < self.max_reported:
                self.rejected.append(ImportRejection(line=line_no, errors=errors))


_CREATE_STAGING = """
    CREATE TEMP TABLE {staging} (
        line_no bigint, rejected boolean, order_id text, customer_id text, occurred_at timestamptz, currency text,
        places int, channel text, store_id text, amount numeric, item text, normalised text
    ) ON COMMIT DROP
"""
_DISAGREEING_ORDERS = """
    SELECT order_id, min(line_no) FROM {staging} WHERE order_id IS NOT NULL AND NOT rejected
    GROUP BY order_id HAVING min(customer_id) <> max(customer_id) OR min(currency) <> max(currency)
    ORDER BY 2 LIMIT $1
"""
_UTC_ISO = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_ENVELOPE_HEAD = (
    """'{"specversion":"1.0","id":"' || f.envelope_id || '","source":"cx.ingest","type":"purchase.completed",'"""
    """ || '"time":"' || f.occurred || '","subject":' || to_json(f.customer_id)::text"""
    """ || ',"datacontenttype":"application/json","data":' || f.data || '}'"""
)
# Event id = hash of the order's normalised lines (in any order in the file): a re-run finds it.
# Data is built once as json text: stored as jsonb, and spliced into the envelope as it is.
_IMPORT_ORDERS = f"""
    WITH orders AS (
        SELECT order_id, min(customer_id) AS customer_id, min(currency) AS currency, min(places) AS places,
            min(occurred_at) AS occurred_at, min(channel) AS channel, min(store_id) AS store_id,
            bool_or(rejected) OR min(customer_id) <> max(customer_id) OR min(currency) <> max(currency) AS skipped,
            CAST('[' || string_agg(item, ',' ORDER BY line_no) || ']' AS json) AS items, sum(amount) AS total,
            'import-' || md5(string_agg(normalised, E'\\n' ORDER BY normalised)) AS event_id
        FROM {{staging}} WHERE order_id IS NOT NULL GROUP BY order_id
    ), fresh AS (
        SELECT event_id, order_id, customer_id, occurred_at, gen_random_uuid()::text AS envelope_id,
            {_UTC_ISO.format("occurred_at")} AS occurred,
            json_build_object('event_id', event_id, 'order_id', order_id, 'customer_id', customer_id,
                'occurred_at', {_UTC_ISO.format("occurred_at")}, 'currency', currency, 'channel', channel,
                'store_id', store_id, 'items', items, 'total', round(total, places)::text)::text AS data
        FROM orders o
        WHERE NOT o.skipped
          AND NOT EXISTS (SELECT 1 FROM ingested_events e WHERE e.order_id = o.order_id AND e.kind = 'purchase')
    ), inserted AS (
        INSERT INTO ingested_events (source, event_id, kind, customer_key, order_id, envelope_id, occurred_at, payload)
        SELECT $1, event_id, 'purchase', customer_id, order_id, envelope_id, occurred_at, CAST(data AS jsonb)
        FROM fresh
        ON CONFLICT ON CONSTRAINT ingested_events_source_event_id DO NOTHING
        RETURNING envelope_id
    ), queued AS (
        INSERT INTO outbox (event_id, topic, key, payload)
        SELECT f.envelope_id, 'ingest.purchases.v1', f.customer_id, {_ENVELOPE_HEAD}
        FROM fresh f JOIN inserted USING (envelope_id) ORDER BY f.occurred_at
    )
    SELECT (SELECT count(*) FROM orders) AS orders,
           (SELECT count(*) FROM orders WHERE skipped) AS skipped,
           (SELECT count(*) FROM orders WHERE NOT skipped) AS good,
           (SELECT count(*) FROM inserted) AS imported
"""


async def import_orders(
    session: AsyncSession,
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
    """Import every order of the stream not seen before; raises MappingError when columns are missing."""
    # A fresh name per import: asyncpg caches statements, and a cached one may name a dropped table.
    staging = f"import_lines_{uuid.uuid4().hex[:16]}"
    # Through the session, so its transaction has begun before COPY uses the raw connection.
    await session.execute(text(_CREATE_STAGING.replace("{staging}", staging)))
    await session.execute(text(f"SET LOCAL work_mem = '{int(work_mem_mb)}MB'"))  # sorts by order in memory
    connection = await (await session.connection()).get_raw_connection()
    pg: Any = connection.driver_connection  # asyncpg, for COPY
    rows = CsvRows(mapping) if file_format == "csv" else NdjsonRows(mapping)
    run = ImportRun(LineCheck(limits), max_reported, staging)
    async for chunk in chunks:
        for line_no, row in rows.feed(chunk):
            run.add(line_no, row)
        if len(run.records) >= copy_rows:
            await _copy(pg, run)
    for line_no, row in rows.feed(b"", final=True):
        run.add(line_no, row)
    await _copy(pg, run)
    room = max(0, max_reported - len(run.rejected))
    for order_id, line_no in await pg.fetch(_DISAGREEING_ORDERS.replace("{staging}", staging), room):
        message = f"lines of order {order_id} disagree on customer_id or currency"
        run.rejected.append(ImportRejection(line=line_no, errors=[FieldError(field="order_id", message=message)]))
    counts = await pg.fetchrow(_IMPORT_ORDERS.replace("{staging}", staging), source)
    return ImportReport(
        lines=run.lines,
        orders=counts["orders"],
        imported=counts["imported"],
        duplicates=counts["good"] - counts["imported"],
        rejected_lines=run.rejected_lines,
        skipped_orders=counts["skipped"],
        rejected=sorted(run.rejected, key=lambda r: r.line),
    )


async def _copy(pg: Any, run: ImportRun) -> None:
    if run.records:
        await pg.copy_records_to_table(run.staging, records=run.records, columns=COLUMNS)
        run.records = []


@router.post("/imports", response_model=ImportReport)
async def post_import(
    request: Request,
    principal: Writer,
    session: SessionDep,
    format: Annotated[Format, Query(description="csv (with a header line) or ndjson")] = "csv",
    map: Annotated[list[str], Query(description="FIELD=COLUMN, repeatable: customer_id=CustomerID")] = [],  # noqa: B006
) -> ImportReport:
    """Stream a file of order lines (any size) as the request body; rows of one order_id form one order."""
    settings = settings_of(request)
    try:
        mapping = parse_mapping(map)
        return await import_orders(
            session,
            source=await source_for(request, session, principal),
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
