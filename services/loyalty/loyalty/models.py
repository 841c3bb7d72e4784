"""Loyalty's tables: members with a stored balance, and the append-only ledger behind it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, String, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"
    # The database itself refuses a negative balance, whatever the code does.
    __table_args__ = (CheckConstraint("points >= 0", name="members_points_not_negative"),)

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    points: Mapped[int] = mapped_column(BigInteger, default=0)
    tier: Mapped[str] = mapped_column(String(32), default="bronze")
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    # One entry per cause: a redelivered purchase cannot earn twice even past the processed row.
    __table_args__ = (
        UniqueConstraint("customer_id", "kind", "cause_type", "cause_id", name="ledger_entries_one_per_cause"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("members.customer_id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # earn, redeem, reverse, expire, adjust
    points: Mapped[int] = mapped_column(BigInteger)  # signed: credits positive, debits negative
    cause_type: Mapped[str] = mapped_column(String(32))
    cause_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
