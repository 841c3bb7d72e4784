"""Exact membership events: one entered per entry, one exited per exit, none when nothing changed."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from segments import service
from segments.config import SegmentsSettings
from segments.events import ProfileUpdated, PurchaseCompleted, PurchaseRefunded
from segments.recompute import recompute_all
from segments.synthetic import generate_synthetic_customers
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.envelope import Envelope
from shared.testing import TestPlatform, rollback_session

SETTINGS = SegmentsSettings(cluster_k=3)
NOW = datetime.now(UTC)


async def clean_slate(session: AsyncSession) -> None:
    """Inside the rolled-back transaction only: the tests see a base of their own."""
    for table in (
        "customers",
        "customer_profiles",
        "orders",
        "refunds",
        "rfm_scores",
        "rfm_cut_points",
        "predictions",
        "clv_models",
        "cluster_models",
        "segment_members",
        "membership_changes",
        "segment_sizes",
        "outbox",
    ):
        await session.execute(text(f"DELETE FROM {table}"))
    await session.execute(text("DELETE FROM segments WHERE kind IN ('rule', 'cluster')"))


async def events_for(session: AsyncSession, customer_id: str) -> list[tuple[str, str]]:
    rows = await session.execute(
        text("SELECT payload FROM outbox WHERE topic = 'segments.membership.v1' AND key = :id ORDER BY id"),
        {"id": customer_id},
    )
    envelopes = [Envelope.model_validate_json(payload) for payload in rows.scalars()]
    return [(e.type, str(e.data["segment_key"])) for e in envelopes]


async def members_of(session: AsyncSession, customer_id: str) -> set[str]:
    rows = await session.execute(
        text("SELECT segment_id FROM segment_members WHERE customer_id = :id"), {"id": customer_id}
    )
    return set(rows.scalars())


def purchase(customer_id: str, order_id: str, total: str, days_ago: int = 0) -> PurchaseCompleted:
    return PurchaseCompleted(
        order_id=order_id,
        customer_id=customer_id,
        occurred_at=NOW - timedelta(days=days_ago),
        currency="USD",
        total=Decimal(total),
    )


def profile(customer_id: str, version: int, **fields: Any) -> ProfileUpdated:
    return ProfileUpdated(customer_id=customer_id, version=version, occurred_at=NOW, profile=fields)


async def add_rule_segment(session: AsyncSession, key: str, rule: dict[str, Any]) -> str:
    segment = await service.create_rule_segment(
        session, key=key, name=key, description="", rule=rule, settings=SETTINGS
    )
    return segment.id


async def test_every_event_shape_follows_the_contract(platform: TestPlatform) -> None:
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        await add_rule_segment(session, "germans", {"field": "traits.country", "op": "eq", "value": "DE"})
        await service.record_profile(session, update=profile("c-shape", 1, traits={"country": "DE"}), settings=SETTINGS)
        payload = (await session.execute(text("SELECT payload, key, topic FROM outbox"))).one()
        envelope = Envelope.model_validate_json(payload.payload)
        assert (payload.key, payload.topic, envelope.subject) == ("c-shape", "segments.membership.v1", "c-shape")
        assert envelope.type == "segment.entered" and envelope.source == "cx.segments"
        assert set(envelope.data) == {
            "customer_id",
            "segment_id",
            "segment_key",
            "segment_name",
            "kind",
            "reason",
            "occurred_at",
        }
        assert envelope.data["kind"] == "rule"
        assert envelope.data["reason"] == "matches traits.country = DE"
        assert datetime.fromisoformat(envelope.data["occurred_at"]).tzinfo is not None


async def test_events_built_in_sql_are_exactly_what_the_envelope_encodes(platform: TestPlatform) -> None:
    """The SQL fills the envelope's own template: decoding and re-encoding gives the same bytes."""
    awkward = 'c-"quoted"\\back\nline-é✓'
    name = 'Deutsch "DE" \\ é✓'
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        segment_id = await add_rule_segment(session, "germans", {"field": "traits.country", "op": "eq", "value": "DE"})
        await session.execute(text("UPDATE segments SET name = :name WHERE id = :id"), {"name": name, "id": segment_id})
        for version, country in ((1, "DE"), (2, "FR")):
            update = profile(awkward, version, traits={"country": country})
            await service.record_profile(session, update=update, settings=SETTINGS)
        rows = (await session.execute(text("SELECT event_id, key, payload FROM outbox ORDER BY id"))).all()
        assert [row.key for row in rows] == [awkward, awkward]
        for row, (event_type, reason) in zip(
            rows,
            [
                ("segment.entered", "matches traits.country = DE"),
                ("segment.exited", "no longer: matches traits.country = DE"),
            ],
            strict=True,
        ):
            envelope = Envelope.decode(row.payload.encode())
            assert envelope.encode().decode() == row.payload
            assert (envelope.id, envelope.type, envelope.subject, envelope.source) == (
                row.event_id,
                event_type,
                awkward,
                "cx.segments",
            )
            assert envelope.data == {
                "customer_id": awkward,
                "segment_id": segment_id,
                "segment_key": "germans",
                "segment_name": name,
                "kind": "rule",
                "reason": reason,
                "occurred_at": envelope.data["occurred_at"],
            }
            assert datetime.fromisoformat(envelope.data["occurred_at"]) == envelope.time


async def test_redelivered_and_reordered_profiles_publish_each_change_once(platform: TestPlatform) -> None:
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        await add_rule_segment(session, "germans", {"field": "traits.country", "op": "eq", "value": "DE"})
        v1, v2, v3 = (
            profile("c-1", 1, traits={"country": "FR"}),
            profile("c-1", 2, traits={"country": "DE"}),
            profile("c-1", 3, traits={"country": "FR"}),
        )
        # Version 2 first, then 2 again, then the stale 1: only one entry.
        for update in (v2, v2, v1):
            await service.record_profile(session, update=update, settings=SETTINGS)
        assert await events_for(session, "c-1") == [("segment.entered", "germans")]
        for update in (v3, v2, v3, v1):
            await service.record_profile(session, update=update, settings=SETTINGS)
        assert await events_for(session, "c-1") == [("segment.entered", "germans"), ("segment.exited", "germans")]
        history = (await session.execute(text("SELECT change FROM membership_changes ORDER BY id"))).scalars().all()
        assert history == ["entered", "exited"]


async def test_a_batch_of_events_ends_like_the_same_events_one_by_one(platform: TestPlatform) -> None:
    """Same members either way; batched, each stay is one entered (and one exited if it ended).

    Batched, a customer re-scored once per batch publishes no enter-and-leave within one batch, so
    its events are a subset of the one-by-one events, alternating from entered.
    """
    from segments.handlers import build_batch_handlers

    from shared.envelope import new_event

    seed = purchase("b-seed", "b-o-seed", "40.00", days_ago=2)  # the cut-points both ways come from this base
    purchases = [purchase(f"b-{i % 4}", f"b-o-{i}", f"{20 + 7 * i}.00", days_ago=i % 5) for i in range(10)]
    updates = [profile(f"b-{i % 4}", 1 + i, traits={"country": "DE" if i % 3 else "FR"}) for i in range(8)]
    outcomes = []
    for batched in (False, True):
        async with rollback_session(platform.engine("segments")) as session:
            await clean_slate(session)
            await add_rule_segment(session, "germans", {"field": "traits.country", "op": "eq", "value": "DE"})
            await add_rule_segment(session, "spenders", {"field": "rfm.monetary", "op": "gte", "value": 60})
            await service.record_purchase(session, purchase=seed, settings=SETTINGS)
            if batched:
                handlers = build_batch_handlers(SETTINGS)

                def envelope(kind: str, data: PurchaseCompleted | ProfileUpdated) -> Envelope:
                    return new_event(type=kind, source="test", subject=data.customer_id, data=data)

                await handlers["purchase.completed"](session, [envelope("purchase.completed", p) for p in purchases])
                await handlers["profile.updated"](session, [envelope("profile.updated", u) for u in updates])
            else:
                for one in purchases:
                    await service.record_purchase(session, purchase=one, settings=SETTINGS)
                for update in updates:
                    await service.record_profile(session, update=update, settings=SETTINGS)
            members = await session.execute(
                text("SELECT s.key, m.customer_id FROM segment_members m JOIN segments s ON s.id = m.segment_id")
            )
            sequences: dict[tuple[str, str], list[str]] = {}
            for customer in ("b-0", "b-1", "b-2", "b-3"):
                for event_type, key in await events_for(session, customer):
                    sequences.setdefault((customer, key), []).append(event_type)
            outcomes.append((sorted(tuple(row) for row in members), sequences))
    (one_by_one, one_by_one_events), (batch, batch_events) = outcomes
    assert batch == one_by_one
    assert any(key == "germans" for key, _ in batch)
    for (customer, key), kinds in batch_events.items():
        assert kinds == ["segment.entered", "segment.exited"][: len(kinds)] or kinds == ["segment.entered"]
        assert (kinds[-1] == "segment.entered") == ((key, customer) in batch)
        assert len(kinds) <= len(one_by_one_events[(customer, key)])
    assert {pair for pair, kinds in one_by_one_events.items() if kinds[-1] == "segment.entered"} == {
        (customer, key) for key, customer in batch if customer != "b-seed"
    }


async def test_a_purchase_delivered_twice_or_refunded_out_of_order_changes_state_once(platform: TestPlatform) -> None:
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        await add_rule_segment(session, "big-spenders", {"field": "rfm.monetary", "op": "gte", "value": 100})
        refund = PurchaseRefunded(
            refund_id="rf-1", order_id="o-2", customer_id="c-2", occurred_at=NOW, amount=Decimal("80.00")
        )
        await generate_synthetic_customers(session, customers=200, as_of=NOW, profiles=False)
        await recompute_all(session, settings=SETTINGS)
        # The refund arrives before its order, and everything is delivered twice.
        for _ in range(2):
            await service.record_refund(session, refund=refund, settings=SETTINGS)
            await service.record_purchase(session, purchase=purchase("c-2", "o-1", "50.00", 3), settings=SETTINGS)
            await service.record_purchase(session, purchase=purchase("c-2", "o-2", "90.00"), settings=SETTINGS)
        score = await service.get_rfm(session, customer_id="c-2")
        assert score is not None and (score.frequency, score.monetary) == (2, Decimal("60.00"))
        events = await events_for(session, "c-2")
        assert ("segment.entered", "big-spenders") not in events  # 140 - 80 = 60 never reached 100
        assert all(count == 1 for count in Counter(events).values())
        # Every segment the customer is in now was entered exactly once more than it was exited.
        balance = Counter(key for kind, key in events if kind == "segment.entered")
        balance.subtract(key for kind, key in events if kind == "segment.exited")
        keys = {row.id: row.key for row in await session.execute(text("SELECT id, key FROM segments"))}
        assert {key for key, n in balance.items() if n == 1} == {keys[s] for s in await members_of(session, "c-2")}
        assert all(n in (0, 1) for n in balance.values())


async def test_repeated_full_recompute_publishes_nothing_new(platform: TestPlatform) -> None:
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        await add_rule_segment(session, "consenting", {"field": "traits.marketing_consent", "op": "eq", "value": True})
        await generate_synthetic_customers(session, customers=400, as_of=NOW)
        first = await recompute_all(session, settings=SETTINGS, as_of=NOW)
        outbox = (await session.execute(text("SELECT count(*) FROM outbox"))).scalar_one()
        assert first.entered == outbox > 400 and first.exited == 0
        again = await recompute_all(session, settings=SETTINGS, as_of=NOW)
        assert (again.entered, again.exited) == (0, 0)
        assert (await session.execute(text("SELECT count(*) FROM outbox"))).scalar_one() == outbox
        # Every customer sits in exactly one RFM segment and one cluster.
        per_kind = await session.execute(
            text(
                "SELECT s.kind, count(*), count(DISTINCT m.customer_id) FROM segment_members m"
                " JOIN segments s ON s.id = m.segment_id WHERE s.kind IN ('rfm', 'cluster') GROUP BY s.kind"
            )
        )
        assert {kind: (n, distinct) for kind, n, distinct in per_kind} == {"rfm": (400, 400), "cluster": (400, 400)}
        sizes = (await session.execute(text("SELECT count(*) FROM segment_sizes"))).scalar_one()
        assert sizes > 0


async def test_a_recompute_drops_scores_and_predictions_of_customers_without_facts(platform: TestPlatform) -> None:
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        await generate_synthetic_customers(session, customers=300, as_of=NOW, days=100)
        await recompute_all(session, settings=SETTINGS, as_of=NOW)
        earlier = NOW - timedelta(days=50)
        # As of 50 days ago only customers whose first order came before then have facts.
        expected = set(
            (
                await session.execute(
                    text("SELECT DISTINCT customer_id FROM orders WHERE occurred_at <= :at"), {"at": earlier}
                )
            ).scalars()
        )
        assert 0 < len(expected) < 300
        await recompute_all(session, settings=SETTINGS, as_of=earlier)
        for table in ("rfm_scores", "predictions"):
            held = set((await session.execute(text(f"SELECT customer_id FROM {table}"))).scalars())
            assert held == expected, table
        rfm_members = await session.execute(
            text(
                "SELECT DISTINCT m.customer_id FROM segment_members m"
                " JOIN segments s ON s.id = m.segment_id WHERE s.kind = 'rfm'"
            )
        )
        assert set(rfm_members.scalars()) == expected


async def test_real_time_updates_agree_with_a_full_recompute(platform: TestPlatform) -> None:
    """After customers change one by one, a full recompute at the same moment has nothing to fix."""
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        await add_rule_segment(
            session,
            "active-germans",
            {
                "all": [
                    {"field": "traits.country", "op": "eq", "value": "DE"},
                    {"field": "rfm.r_score", "op": "gte", "value": 3},
                ]
            },
        )
        await generate_synthetic_customers(session, customers=300, as_of=NOW)
        await recompute_all(session, settings=SETTINGS, as_of=NOW)
        touched = [f"syn-{i}" for i in range(1, 60)]
        for i, customer_id in enumerate(touched):
            await service.record_purchase(
                session, purchase=purchase(customer_id, f"rt-{i}", f"{20 + i}.00"), settings=SETTINGS
            )
            await service.record_profile(
                session,
                update=profile(customer_id, 2, traits={"country": "DE" if i % 2 else "FR", "marketing_consent": True}),
                settings=SETTINGS,
            )
        # Cluster targets were staged by the earlier recompute (before these purchases): leave them out.
        before = {c: {s for s in await members_of(session, c) if not s.startswith("cluster-")} for c in touched}
        await session.execute(text("DELETE FROM outbox"))
        # Pin the cut-points, model and clusters the real-time path used, then recompute rule segments only.
        from segments.recompute import _Stopwatch, sync_all_memberships

        await sync_all_memberships(session, settings=SETTINGS, as_of=NOW, at=NOW, watch=_Stopwatch())
        after = {c: {s for s in await members_of(session, c) if not s.startswith("cluster-")} for c in touched}
        assert after == before
        moved = await session.execute(
            text("SELECT count(*) FROM outbox WHERE key = ANY(:ids) AND payload NOT LIKE '%cluster-%'"),
            {"ids": touched},
        )
        assert moved.scalar_one() == 0


async def test_deleting_a_rule_segment_exits_every_member_once(platform: TestPlatform) -> None:
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        segment_id = await add_rule_segment(session, "anyone", {"field": "traits.country", "op": "exists"})
        for i in range(5):
            await service.record_profile(
                session, update=profile(f"d-{i}", 1, traits={"country": "NL"}), settings=SETTINGS
            )
        segment = await service.get_segment(session, segment_id=segment_id)
        assert segment is not None
        changes = await service.delete_rule_segment(session, segment=segment)
        assert (changes.entered, changes.exited) == (0, 5)
        assert await service.get_segment(session, segment_id=segment_id) is None
        await service.record_profile(session, update=profile("d-0", 2, traits={"country": "DE"}), settings=SETTINGS)
        assert await events_for(session, "d-0") == [("segment.entered", "anyone"), ("segment.exited", "anyone")]


async def test_history_tells_who_was_in_a_segment_when(platform: TestPlatform) -> None:
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        segment_id = await add_rule_segment(
            session, "vip", {"field": "profile.loyalty_tier", "op": "eq", "value": "gold"}
        )
        await service.record_profile(session, update=profile("h-1", 1, loyalty_tier="gold"), settings=SETTINGS)
        await service.record_profile(session, update=profile("h-1", 2, loyalty_tier="silver"), settings=SETTINGS)
        await service.record_profile(session, update=profile("h-1", 3, loyalty_tier="gold"), settings=SETTINGS)
        rows = await service.membership_history(session, segment_id=segment_id, limit=10)
        assert [change.change for change, _ in rows] == ["entered", "exited", "entered"][::-1]
        page = await service.membership_history(session, customer_id="h-1", limit=2)
        rest = await service.membership_history(session, customer_id="h-1", limit=2, before=page[-1][0].id)
        assert [c.change for c, _ in (*page, *rest)] == ["entered", "exited", "entered"]
        assert orjson.dumps([c.reason for c, _ in rows]).decode().count("loyalty_tier") == 3


async def test_an_erased_customer_leaves_every_segment_and_is_forgotten(platform: TestPlatform) -> None:
    from segments.events import ErasureRequested

    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        await add_rule_segment(session, "dutch", {"field": "traits.country", "op": "eq", "value": "NL"})
        await service.record_purchase(session, purchase=purchase("e-1", "e-o1", "30.00"), settings=SETTINGS)
        await service.record_profile(session, update=profile("e-1", 1, traits={"country": "NL"}), settings=SETTINGS)
        assert len(await members_of(session, "e-1")) == 2  # the rule and an RFM segment
        await service.erase_customer(session, request=ErasureRequested(request_id="er-1", customer_id="e-1"))
        assert await members_of(session, "e-1") == set()
        exits = [kind for kind, _ in await events_for(session, "e-1") if kind == "segment.exited"]
        assert len(exits) == 2
        for table in ("orders", "customer_profiles", "rfm_scores", "membership_changes", "customers"):
            left = await session.execute(text(f"SELECT count(*) FROM {table} WHERE customer_id = 'e-1'"))
            assert left.scalar_one() == 0, table
        confirmed = await session.execute(text("SELECT payload FROM outbox WHERE topic = 'segments.erasures.v1'"))
        envelope = Envelope.model_validate_json(confirmed.scalar_one())
        assert envelope.type == "erasure.confirmed" and envelope.data["request_id"] == "er-1"


async def test_facts_count_occasions_and_repeat_spend_net_of_refunds(platform: TestPlatform) -> None:
    from segments.facts import build_facts_table, load_customer_facts

    day = datetime(2026, 3, 10, 9, tzinfo=UTC)
    async with rollback_session(platform.engine("segments")) as session:
        await clean_slate(session)
        await session.execute(text("INSERT INTO customers (customer_id) VALUES ('f-1'), ('f-2')"))
        orders = [
            ("o-1", "f-1", day, "10.00"),
            ("o-2", "f-1", day + timedelta(hours=5), "20.00"),  # same UTC day: one occasion
            ("o-3", "f-1", day + timedelta(days=1), "30.00"),
            ("o-4", "f-1", day + timedelta(days=3), "40.00"),
            ("o-5", "f-2", day, "15.00"),
        ]
        for order_id, customer, at, amount in orders:
            await session.execute(
                text("INSERT INTO orders VALUES (:id, :c, :at, :amount, 'USD')"),
                {"id": order_id, "c": customer, "at": at, "amount": Decimal(amount)},
            )
        refunds = [("r-1", "o-3", "f-1", "5.00"), ("r-2", "o-1", "f-1", "1.00"), ("r-3", "o-5", "f-2", "15.00")]
        for refund_id, order_id, customer, amount in refunds:
            await session.execute(
                text("INSERT INTO refunds VALUES (:id, :o, :c, :at, :amount)"),
                {
                    "id": refund_id,
                    "o": order_id,
                    "c": customer,
                    "at": day + timedelta(days=4),
                    "amount": Decimal(amount),
                },
            )
        as_of = day + timedelta(days=10)
        one = await load_customer_facts(session, customer_id="f-1", as_of=as_of)
        assert one is not None
        assert (one.frequency, one.repeat_days, one.recency_days, one.tenure_days) == (4, 2, 7, 10)
        assert one.monetary == Decimal("94.00")  # 100 ordered, 6 refunded
        assert one.repeat_spend == Decimal("65.00")  # (30 - 5) + 40: the first day's orders do not count
        await build_facts_table(session, as_of=as_of)
        rows = {r.customer_id: r for r in await session.execute(text("SELECT * FROM customer_facts"))}
        assert (rows["f-1"].repeat_spend, rows["f-1"].monetary, rows["f-1"].repeat_days) == (
            Decimal("65.00"),
            Decimal("94.00"),
            2,
        )
        assert (rows["f-2"].repeat_spend, rows["f-2"].monetary, rows["f-2"].repeat_days) == (0, 0, 0)
