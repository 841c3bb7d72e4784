"""Admin API for API keys (scope `admin`): create, list, rotate, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status

from ingest import credentials
from ingest.schemas import ApiKeyCreate, ApiKeyIssuedRead, ApiKeyRead
from shared.auth import ApiKeyPrincipal, require_scope
from shared.db import SessionDep

router = APIRouter(prefix="/v1/admin/api-keys", tags=["admin"])
Admin = Annotated[ApiKeyPrincipal, Depends(require_scope("admin"))]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyIssuedRead)
async def create_api_key(body: ApiKeyCreate, _: Admin, session: SessionDep) -> ApiKeyIssuedRead:
    key, plaintext = await credentials.create_key(session, **body.model_dump())
    return ApiKeyIssuedRead(**key.model_dump(), key=plaintext)


@router.get("", response_model=list[ApiKeyRead])
async def list_api_keys(_: Admin, session: SessionDep, include_revoked: bool = False) -> list[ApiKeyRead]:
    return await credentials.list_keys(session, include_revoked=include_revoked)


@router.post("/{key_id}/rotate", status_code=status.HTTP_201_CREATED, response_model=ApiKeyIssuedRead)
async def rotate_api_key(key_id: str, _: Admin, session: SessionDep) -> ApiKeyIssuedRead:
    rotated = await credentials.rotate_key(session, key_id=key_id)
    if rotated is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no active API key with this id")
    key, plaintext = rotated
    return ApiKeyIssuedRead(**key.model_dump(), key=plaintext)


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(key_id: str, _: Admin, session: SessionDep) -> Response:
    if not await credentials.revoke_key(session, key_id=key_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no active API key with this id")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
