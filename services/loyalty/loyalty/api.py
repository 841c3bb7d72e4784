"""Loyalty HTTP API: staff read any member with an API key; a customer token reads only its own."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, status

from loyalty import service
from loyalty.schemas import MemberRead
from shared.auth import CustomerDep, require_scope
from shared.db import SessionDep

router = APIRouter(prefix="/v1", tags=["loyalty"])


async def _member_read(session: SessionDep, customer_id: str) -> MemberRead:
    member = await service.get_member(session, customer_id=customer_id)
    if member is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "member not found")
    return MemberRead(
        customer_id=member.customer_id,
        points=member.points,
        tier=member.tier,
        expiring=[],
        updated_at=member.updated_at,
    )


@router.get("/members/{customer_id}", response_model=MemberRead, dependencies=[Depends(require_scope("loyalty:read"))])
async def get_member(customer_id: str, session: SessionDep) -> MemberRead:
    return await _member_read(session, customer_id)


@router.get("/me", response_model=MemberRead)
async def get_me(customer: CustomerDep, session: SessionDep) -> MemberRead:
    return await _member_read(session, customer.customer_id)
