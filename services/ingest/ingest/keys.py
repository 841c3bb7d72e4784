"""API key tool on ingest's database: `python -m ingest.keys create|list|rotate|revoke`.

Works on INGEST_DATABASE_URL; issued and revoked keys reach every service through the outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from ingest import credentials
from ingest.config import IngestSettings
from ingest.schemas import ApiKeyCreate, ApiKeyRead
from shared.db import make_engine, make_sessionmaker

T = TypeVar("T")
cli = typer.Typer(help="Create, list, rotate and revoke API keys.", no_args_is_help=True)


def run_in_transaction(work: Callable[[AsyncSession], Awaitable[T]], database_url: str | None = None) -> T:
    async def main() -> T:
        engine = make_engine(database_url or IngestSettings().database_url, pool_size=1, max_overflow=0)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _show_new(key: ApiKeyRead, plaintext: str) -> None:
    typer.echo(f"key id:  {key.key_id}\nname:    {key.name}\nscopes:  {' '.join(key.scopes)}\nsource:  {key.source}")
    typer.echo(f"key:     {plaintext}")
    typer.echo("Store the key now: it is shown once and cannot be recovered.", err=True)


@cli.command()
def create(
    name: Annotated[str, typer.Option(help="What the key is for")],
    scope: Annotated[list[str], typer.Option(help="A scope; repeat for several")],
    source: Annotated[str | None, typer.Option(help="Dedup namespace for its events (default: the key id)")] = None,
    rate_limit: Annotated[int | None, typer.Option(help="Requests per second")] = None,
    expires_at: Annotated[datetime | None, typer.Option(help="ISO 8601, UTC if no zone")] = None,
) -> None:
    """Issue a key."""
    try:
        request = ApiKeyCreate(
            name=name, scopes=scope, source=source, rate_limit_per_second=rate_limit, expires_at=expires_at
        )
    except ValidationError as error:
        raise typer.BadParameter(str(error)) from error
    key, plaintext = run_in_transaction(lambda s: credentials.create_key(s, **request.model_dump()))
    _show_new(key, plaintext)


@cli.command("list")
def list_(all_: Annotated[bool, typer.Option("--all", help="Include revoked keys")] = False) -> None:
    """List keys (never the keys themselves)."""
    keys = run_in_transaction(lambda s: credentials.list_keys(s, include_revoked=all_))
    typer.echo(f"{'key id':<14} {'name':<24} {'source':<20} {'limit/s':>7}  {'state':<8} scopes")
    for key in keys:
        state = "revoked" if key.revoked_at else "active"
        limit = str(key.rate_limit_per_second or "-")
        typer.echo(
            f"{key.key_id:<14} {key.name[:24]:<24} {key.source[:20]:<20} {limit:>7}  {state:<8} {' '.join(key.scopes)}"
        )


@cli.command()
def rotate(key_id: str) -> None:
    """Issue a key like KEY_ID (same name, scopes, source) and revoke KEY_ID."""
    rotated = run_in_transaction(lambda s: credentials.rotate_key(s, key_id=key_id))
    if rotated is None:
        typer.echo(f"no active key {key_id}", err=True)
        raise typer.Exit(1)
    _show_new(*rotated)
    typer.echo(f"revoked: {key_id}")


@cli.command()
def revoke(key_id: str) -> None:
    """Revoke a key on every service."""
    if not run_in_transaction(lambda s: credentials.revoke_key(s, key_id=key_id)):
        typer.echo(f"no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked: {key_id}")


if __name__ == "__main__":
    cli()
