"""Bulk import of order history: streamed CSV/NDJSON, grouping, rejected lines, re-runs import nothing twice."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from ingest.api import limits
from ingest.config import IngestSettings
from ingest.importer import cli
from ingest.imports import PART_COLUMNS, CsvRows, LineCheck, import_orders, order_part, parse_mapping
from ingest.schemas import ImportReport
from sqlalchemy import text
from typer.testing import CliRunner

from shared.envelope import Envelope
from shared.outbox import asyncpg_dsn
from shared.testing import TestPlatform


def tag() -> str:
    return uuid.uuid4().hex[:10]


def shop_export(t: str) -> str:
    """A shop's export with its own column names: two orders, one with a bad line, one spread over the file."""
    return (
        "\ufeffOrderNo,Customer,Date,Currency,SKU,Product,Qty,Price\n"
        f'A-{t},c1-{t},2024-03-01T10:00:00Z,USD,MUG,"Mug, large",2,19.90\n'
        f"B-{t},c2-{t},2024-03-02T11:00:00+01:00,USD,TEA,Tea,two,5.00\n"
        f"B-{t},c2-{t},2024-03-02T11:00:00+01:00,USD,CUP,Cup,1,3.00\n"
        f'C-{t},c3-{t},2024-03-03T09:30:00Z,JPY,RICE,"Rice\n(5 kg)",1,2400\n'
        f"A-{t},c1-{t},2024-03-01T10:00:00Z,USD,TEA,Tea,1,5.00\n"
    )


MAPPING = [
    ("map", "order_id=OrderNo"),
    ("map", "customer_id=Customer"),
    ("map", "occurred_at=Date"),
    ("map", "sku=SKU"),
    ("map", "name=Product"),
    ("map", "quantity=Qty"),
    ("map", "unit_price=Price"),
]


async def chunked(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    """Small chunks: records and multi-byte characters split across reads."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def stored_order(platform: TestPlatform, order_id: str) -> list[dict[str, Any]]:
    async with platform.engine("ingest").connect() as conn:
        rows = await conn.execute(
            text("select payload from ingested_events where order_id = :o and kind = 'purchase'"), {"o": order_id}
        )
        return [row.payload for row in rows]


async def test_csv_import_groups_lines_reports_bad_ones_and_reruns_import_nothing(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    t = tag()
    body = shop_export(t).encode()
    params = httpx.QueryParams([("format", "csv"), *MAPPING])
    answer = await api.post("/v1/imports", params=params, content=chunked(body), headers=api_headers)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    counted = ("lines", "orders", "imported", "duplicates", "rejected_lines", "skipped_orders")
    assert {k: report[k] for k in counted} == {
        "lines": 5, "orders": 3, "imported": 2, "duplicates": 0, "rejected_lines": 1, "skipped_orders": 1,
    }  # fmt: skip
    assert report["rejected"] == [
        {"line": 3, "errors": [{"field": "quantity", "message": "must be a whole number from 1 to 1,000,000",
                                "type": "value_error"}]}
    ]  # fmt: skip
    [order_a] = await stored_order(platform, f"A-{t}")
    assert order_a["total"] == "44.80"
    assert [(i["sku"], i["name"], i["quantity"], i["unit_price"]) for i in order_a["items"]] == [
        ("MUG", "Mug, large", 2, "19.90"),
        ("TEA", "Tea", 1, "5.00"),
    ]
    async with platform.engine("ingest").connect() as conn:
        queued = await conn.scalar(
            text("select o.payload from outbox o join ingested_events e on e.envelope_id = o.event_id "
                 "where e.order_id = :o"), {"o": f"A-{t}"}
        )  # fmt: skip
    envelope = Envelope.decode(queued.encode())
    assert (envelope.type, envelope.subject, envelope.data) == ("purchase.completed", f"c1-{t}", order_a)
    [order_c] = await stored_order(platform, f"C-{t}")
    assert (order_c["currency"], order_c["total"], order_c["items"][0]["name"]) == ("JPY", "2400", "Rice\n(5 kg)")
    again = await api.post("/v1/imports", params=params, content=body, headers=api_headers)
    assert (again.json()["imported"], again.json()["duplicates"]) == (0, 2)
    assert len(await stored_order(platform, f"A-{t}")) == 1


async def test_ndjson_import_reports_lines_that_are_not_objects(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    t = tag()
    line = {"order_id": f"N-{t}", "customer_id": f"c-{t}", "occurred_at": "2024-05-01T08:00:00Z", "currency": "EUR"}
    lines = [
        orjson.dumps(line | {"sku": "A", "quantity": 1, "unit_price": 10}),
        b"{not json",
        orjson.dumps(line | {"sku": "B", "quantity": 3, "unit_price": "2.50"}),
        b"",
        orjson.dumps(line | {"order_id": f"M-{t}", "sku": "A", "quantity": 1, "unit_price": 1, "currency": "XXX"}),
    ]
    answer = await api.post("/v1/imports?format=ndjson", content=b"\n".join(lines), headers=api_headers)
    report = answer.json()
    assert (report["imported"], report["rejected_lines"]) == (1, 2), report
    assert [(r["line"], r["errors"][0]["field"]) for r in report["rejected"]] == [(2, "line"), (5, "currency")]
    [order] = await stored_order(platform, f"N-{t}")
    assert order["total"] == "17.50"


async def test_lines_of_one_order_that_disagree_skip_the_order(
    api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    t = tag()
    csv_text = (
        "order_id,customer_id,occurred_at,currency,sku,quantity,unit_price\n"
        f"D-{t},c1,2024-01-01T00:00:00Z,USD,A,1,1.00\n"
        f"D-{t},c2,2024-01-01T00:00:00Z,USD,B,1,1.00\n"
    )
    report = (await api.post("/v1/imports", content=csv_text, headers=api_headers)).json()
    assert (report["imported"], report["skipped_orders"]) == (0, 1)
    assert report["rejected"][0]["line"] == 2


async def test_missing_columns_and_bad_mappings_are_422(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    missing = await api.post("/v1/imports", content="order_id,sku\nA,B\n", headers=api_headers)
    assert missing.status_code == 422
    assert {e["field"] for e in missing.json()["errors"]} >= {"map.customer_id", "map.unit_price"}
    bad_map = await api.post("/v1/imports?map=colour=Colour", content="x\n", headers=api_headers)
    assert bad_map.status_code == 422


async def test_import_body_is_not_limited_to_1_mib(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    t = tag()
    header = "order_id,customer_id,occurred_at,currency,sku,name,quantity,unit_price\n"
    line = "O{order}-{t},c{customer}-{t},2024-02-01T12:00:00Z,USD,SKU{sku},Item {i} of a catalogue,1,9.99\n"
    rows = (line.format(order=i // 3, customer=i // 3 % 97, sku=i % 3, i=i, t=t) for i in range(12_000))
    body = (header + "".join(rows)).encode()
    assert len(body) > 1_048_576
    answer = await api.post("/v1/imports", content=chunked(body, 65_536), headers=api_headers)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["lines"], answer.json()["imported"]) == (12_000, 4_000)


async def test_refund_of_an_imported_order_is_priced_from_it(
    api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    t = tag()
    csv_text = (
        "order_id,customer_id,occurred_at,currency,sku,quantity,unit_price\n"
        f"R-{t},c-{t},2024-01-01T00:00:00Z,USD,A,2,7.25\n"
    )
    assert (await api.post("/v1/imports", content=csv_text, headers=api_headers)).json()["imported"] == 1
    refund = {"event_id": f"ref-{t}", "order_id": f"R-{t}", "customer_id": f"c-{t}", "currency": "USD",
              "occurred_at": "2024-02-01T00:00:00Z", "items": [{"sku": "A", "quantity": 3}]}  # fmt: skip
    assert (await api.post("/v1/refunds", json=refund, headers=api_headers)).status_code == 422
    refund["items"] = [{"sku": "A", "quantity": 2}]
    assert (await api.post("/v1/refunds", json=refund, headers=api_headers)).status_code == 202


async def test_no_file_makes_a_500(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    rng = random.Random(7)
    header = b"order_id,customer_id,occurred_at,currency,sku,quantity,unit_price\n"
    pieces = [b",", b'"', b"\n", b"\r\n", b"\x00", b"\xff", b"{", b"}", b"1e999", b"-1", b"A-1", b"USD", b"\xc3",
              b"2024-01-01T00:00:00Z", b"NaN", b" ", "\u00e9".encode(), b"[]", b"null", b'{"order_id": 1}',
              b"x" * 140_000]  # fmt: skip
    for _ in range(40):
        junk = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 200)))
        for fmt, body in (("csv", header + junk), ("csv", junk), ("ndjson", junk)):
            answer = await api.post(f"/v1/imports?format={fmt}", content=body, headers=api_headers)
            assert answer.status_code in (200, 422), (body, answer.text)


def test_import_tool_writes_to_the_database_and_reruns_import_nothing(platform: TestPlatform, tmp_path: Path) -> None:
    t = tag()
    file = tmp_path / "orders.csv"
    file.write_text(shop_export(t))
    args = [str(file), *(part for _, spec in MAPPING for part in ("--map", spec)), "--source", f"cli-{t}"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout[first.stdout.index("{") :])
    assert (report["imported"], report["rejected"][0]["line"]) == (2, 3)
    second = CliRunner().invoke(cli, args)
    assert json.loads(second.stdout[second.stdout.index("{") :])["duplicates"] == 2


async def import_in_chunks(platform: TestPlatform, body: str, *, source: str, copy_rows: int) -> ImportReport:
    connection = await asyncpg.connect(asyncpg_dsn(platform.database_urls["ingest"]))
    try:
        async with connection.transaction():
            return await import_orders(
                connection,
                source=source,
                chunks=chunked(body.encode(), 40),
                file_format="csv",
                mapping=parse_mapping([]),
                limits=limits(IngestSettings()),
                copy_rows=copy_rows,
            )
    finally:
        await connection.close()


async def test_orders_spread_over_chunks_are_stored_whole_once(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    """Chunks of two lines: A, C and D come back in later chunks, B crosses a chunk's end, F is known."""
    t = tag()
    when = "2024-04-01T10:00:00Z"
    lines = [
        (f"A-{t}", "c1", "A1", "1"), (f"A-{t}", "c1", "A2", "1"), (f"B-{t}", "c2", "B1", "1"),
        (f"B-{t}", "c2", "B2", "1"), (f"B-{t}", "c2", "B3", "1"), (f"C-{t}", "c3", "C1", "1"),
        (f"D-{t}", "c4", "D1", "1"), (f"E-{t}", "c5", "E1", "1"), (f"F-{t}", "c6", "F1", "1"),
        (f"A-{t}", "c1", "A3", "2"), (f"C-{t}", "c3", "C2", "lots"), (f"D-{t}", "c9", "D2", "1"),
    ]  # fmt: skip
    body = "order_id,customer_id,occurred_at,currency,sku,quantity,unit_price\n" + "".join(
        f"{order},{customer}-{t},{when},USD,{sku},{quantity},2.50\n" for order, customer, sku, quantity in lines
    )
    live = {"event_id": f"live-{t}", "order_id": f"F-{t}", "customer_id": f"c6-{t}", "occurred_at": when,
            "currency": "USD", "items": [{"sku": "F1", "quantity": 1, "unit_price": "2.50"}]}  # fmt: skip
    assert (await api.post("/v1/purchases", json=live, headers=api_headers)).status_code == 202
    report = await import_in_chunks(platform, body, source=f"chunks-{t}", copy_rows=2)
    assert (report.orders, report.imported, report.duplicates, report.skipped_orders) == (6, 3, 1, 2)
    assert [(r.line, r.errors[0].field) for r in report.rejected] == [(8, "order_id"), (12, "quantity")]
    [order_a] = await stored_order(platform, f"A-{t}")
    assert ([i["sku"] for i in order_a["items"]], order_a["total"]) == (["A1", "A2", "A3"], "10.00")
    # Grouped again in SQL from its parts: the same event id and data as A grouped whole in one chunk.
    check = LineCheck(limits(IngestSettings()))
    rows = [row for _, row in CsvRows(parse_mapping([])).feed(body.encode(), final=True) if not isinstance(row, str)]
    part = order_part(f"A-{t}", [check.line(n, row)[0] for n, row in enumerate(rows, 2) if row[0] == f"A-{t}"])
    assert order_a == orjson.loads(part[PART_COLUMNS.index("data")])
    assert [len(await stored_order(platform, f"{o}-{t}")) for o in "BCDE"] == [1, 0, 0, 1]
    async with platform.engine("ingest").connect() as conn:
        queued = (
            await conn.execute(
                text("select o.payload from outbox o join ingested_events e on e.envelope_id = o.event_id "
                     "where e.source = :s"), {"s": f"chunks-{t}"}
            )
        ).scalars().all()  # fmt: skip
        parts = await conn.scalar(text("select count(*) from outbox where payload like :p"), {"p": f"%A-{t}%"})
    assert sorted(Envelope.decode(q.encode()).data["order_id"] for q in queued) == [f"{o}-{t}" for o in "ABE"]
    assert parts == 1  # A queued once, whole
    whole = await import_in_chunks(platform, body, source=f"chunks-{t}", copy_rows=1000)
    again = await import_in_chunks(platform, body, source=f"chunks-{t}", copy_rows=2)
    assert (whole.imported, whole.duplicates, again.imported, again.duplicates) == (0, 4, 0, 4)
