"""Import order history: `python -m ingest.importer FILE --format csv --map customer_id=CustomerID ...`.

With --url the file is streamed to a running ingest (`POST /v1/imports`, key from --key or
INGEST_API_KEY); without, it is imported straight into INGEST_DATABASE_URL. Either way a progress
bar follows the bytes read, and a re-run imports nothing twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import asyncpg
import httpx
import typer
from tqdm import tqdm

from ingest.api import limits
from ingest.config import IngestSettings
from ingest.imports import Format, MappingError, import_orders, parse_mapping
from shared.outbox import asyncpg_dsn

CHUNK_BYTES = 1 << 20
cli = typer.Typer(add_completion=False)


def _chunks(file: BinaryIO, progress: tqdm[Any]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK_BYTES):
        progress.update(len(chunk))
        yield chunk


def import_over_http(path: Path, *, url: str, key: str, file_format: Format, maps: list[str]) -> dict[str, Any]:
    params = httpx.QueryParams([("format", file_format), *(("map", spec) for spec in maps)])
    with (
        path.open("rb") as file,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name) as progress,
        httpx.Client(base_url=url, timeout=httpx.Timeout(30.0, read=None)) as client,
    ):
        answer = client.post(
            "/v1/imports",
            params=params,
            content=_chunks(file, progress),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"},
        )
    if answer.status_code != 200:
        raise typer.BadParameter(f"ingest answered {answer.status_code}: {answer.text}")
    report: dict[str, Any] = answer.json()
    return report


def import_into_database(path: Path, *, source: str, file_format: Format, maps: list[str]) -> dict[str, Any]:
    settings = IngestSettings()
    mapping = parse_mapping(maps)
    size = path.stat().st_size

    async def main() -> dict[str, Any]:
        connection = await asyncpg.connect(asyncpg_dsn(settings.database_url))
        try:
            with (
                path.open("rb") as file,
                tqdm(total=size, unit="B", unit_scale=True, desc=path.name) as progress,
            ):

                async def chunks() -> AsyncIterator[bytes]:
                    for chunk in _chunks(file, progress):
                        yield chunk

                async with connection.transaction():
                    report = await import_orders(
                        connection,
                        source=source,
                        chunks=chunks(),
                        file_format=file_format,
                        mapping=mapping,
                        limits=limits(settings),
                        copy_rows=settings.import_copy_rows,
                        max_reported=settings.import_max_reported_errors,
                        work_mem_mb=settings.import_work_mem_mb,
                    )
            return report.model_dump(mode="json")
        finally:
            await connection.close()

    return asyncio.run(main())


@cli.command()
def main(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    format: Annotated[str | None, typer.Option(help="csv or ndjson (default: from the file's extension)")] = None,
    map: Annotated[list[str] | None, typer.Option(help="FIELD=COLUMN, repeatable")] = None,
    url: Annotated[str | None, typer.Option(help="A running ingest, e.g. http://127.0.0.1:8001")] = None,
    key: Annotated[str | None, typer.Option(envvar="INGEST_API_KEY", help="API key with ingest:write")] = None,
    source: Annotated[str, typer.Option(help="Dedup source when writing to the database directly")] = "import",
) -> None:
    """Import a CSV or NDJSON file of order lines; rows sharing an order id form one order."""
    chosen = format or ("ndjson" if file.suffix.lower() in {".ndjson", ".jsonl"} else "csv")
    if chosen not in ("csv", "ndjson"):
        raise typer.BadParameter("--format must be csv or ndjson")
    file_format: Format = "csv" if chosen == "csv" else "ndjson"
    maps = map or []
    try:
        if url:
            if not key:
                raise typer.BadParameter("--key (or INGEST_API_KEY) is required with --url")
            report = import_over_http(file, url=url, key=key, file_format=file_format, maps=maps)
        else:
            report = import_into_database(file, source=source, file_format=file_format, maps=maps)
    except MappingError as error:
        raise typer.BadParameter(str(error)) from error
    typer.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli()
