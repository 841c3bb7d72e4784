"""What ingest knows of an order, to price refunds and refuse refunds beyond the order."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from ingest.events import RefundedItem
from ingest.schemas import PurchaseIn, RefundIn
from shared.errors import FieldError

# Refunds of one order are serialised so two at once cannot together exceed it.
_LOCK_ORDERS = (
    "SELECT pg_advisory_xact_lock(h) FROM "
    "(SELECT DISTINCT hashtextextended('ingest-order:' || o, 0) AS h FROM unnest($1::text[]) o ORDER BY h) s"
)
# payload as text: parsed here whatever json codec the connection has.
_ORDER_HISTORY = (
    "SELECT kind, payload::text FROM ingested_events "
    "WHERE order_id = ANY($1::text[]) AND kind IN ('purchase', 'refund') ORDER BY id"
)


@dataclass
class OrderLine:
    quantity: int  # still refundable
    unit_price: Decimal
    category: str | None


@dataclass
class OrderState:
    customer_id: str
    currency: str
    refundable: Decimal
    lines: dict[str, OrderLine] = field(default_factory=dict)

    @classmethod
    def from_purchase(cls, data: dict[str, Any]) -> OrderState:
        order = cls(customer_id=data["customer_id"], currency=data["currency"], refundable=Decimal(data["total"]))
        for item in data["items"]:
            line = order.lines.get(item["sku"])
            if line is None:
                order.lines[item["sku"]] = OrderLine(
                    item["quantity"], Decimal(item["unit_price"]), item.get("category")
                )
            else:
                line.quantity += item["quantity"]
        return order

    def apply_refund(self, amount: Decimal, items: list[tuple[str, int]]) -> None:
        self.refundable -= amount
        for sku, quantity in items:
            if sku in self.lines:
                self.lines[sku].quantity -= quantity


@dataclass
class OrderBook:
    """The orders named by a set of refunds: from ingest's database, then this request's events."""

    orders: dict[str, OrderState] = field(default_factory=dict)

    @classmethod
    async def load(cls, connection: asyncpg.Connection, order_ids: Collection[str]) -> OrderBook:
        """Call in a transaction: the orders stay locked until it ends."""
        book = cls()
        if not order_ids:
            return book
        orders = sorted(set(order_ids))
        await connection.execute(_LOCK_ORDERS, orders)
        for kind, payload in await connection.fetch(_ORDER_HISTORY, orders):
            data = orjson.loads(payload)
            order = book.orders.get(data["order_id"])
            if kind == "purchase" and order is None:
                book.orders[data["order_id"]] = OrderState.from_purchase(data)
            elif kind == "refund" and order is not None:
                refunded = [(i["sku"], i["quantity"]) for i in data.get("items") or []]
                order.apply_refund(Decimal(data["amount"]), refunded)
        return book

    def add_purchase(self, purchase: PurchaseIn, total: Decimal) -> None:
        if purchase.order_id in self.orders:
            return
        order = OrderState(customer_id=purchase.customer_id, currency=purchase.currency, refundable=total)
        for item in purchase.items:
            line = order.lines.setdefault(item.sku, OrderLine(0, item.unit_price, item.category))
            line.quantity += item.quantity
        self.orders[purchase.order_id] = order

    def refund(self, refund: RefundIn) -> tuple[Decimal, list[RefundedItem] | None, list[FieldError]]:
        """The refund's amount and priced items, or the errors that refuse it; records it when accepted."""
        order = self.orders.get(refund.order_id)
        items, errors = self._priced_items(refund, order)
        if errors:
            return Decimal(0), None, errors
        amount = refund.amount
        if amount is None:
            amount = sum((i.unit_price * i.quantity for i in items or []), Decimal(0))
        if order is not None:
            errors = self._order_errors(refund, order, amount, items)
            if errors:
                return Decimal(0), None, errors
            order.apply_refund(amount, [(i.sku, i.quantity) for i in items or []])
        return amount, items, []

    @staticmethod
    def _priced_items(refund: RefundIn, order: OrderState | None) -> tuple[list[RefundedItem] | None, list[FieldError]]:
        if refund.items is None:
            return None, []
        priced: list[RefundedItem] = []
        errors: list[FieldError] = []
        for i, item in enumerate(refund.items):
            line = order.lines.get(item.sku) if order is not None else None
            if order is not None and line is None:
                errors.append(FieldError(field=f"items.{i}.sku", message=f"is not in order {refund.order_id}"))
                continue
            price = item.unit_price if item.unit_price is not None else (line.unit_price if line else None)
            if price is None:
                message = f"is required: order {refund.order_id} is not known to ingest"
                errors.append(FieldError(field=f"items.{i}.unit_price", message=message, type="missing"))
                continue
            category = item.category if item.category is not None else (line.category if line else None)
            priced.append(RefundedItem(item.sku, item.quantity, price, category))
        return priced, errors

    @staticmethod
    def _order_errors(
        refund: RefundIn, order: OrderState, amount: Decimal, items: list[RefundedItem] | None
    ) -> list[FieldError]:
        errors: list[FieldError] = []
        if refund.customer_id != order.customer_id:
            errors.append(FieldError(field="customer_id", message=f"order {refund.order_id} is another customer's"))
        if refund.currency != order.currency:
            errors.append(FieldError(field="currency", message=f"order {refund.order_id} is in {order.currency}"))
        wanted: dict[str, int] = {}
        for i, item in enumerate(items or []):
            wanted[item.sku] = wanted.get(item.sku, 0) + item.quantity
            if wanted[item.sku] > order.lines[item.sku].quantity:
                left = order.lines[item.sku].quantity
                errors.append(FieldError(field=f"items.{i}.quantity", message=f"only {left} left to refund"))
        if amount > order.refundable:
            errors.append(FieldError(field="amount", message=f"only {order.refundable} of the order left to refund"))
        return errors
