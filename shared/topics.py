"""Every topic of the platform; `python -m shared.topics` creates them on the broker."""

from __future__ import annotations

import asyncio
import os

PURCHASES = "ingest.purchases.v1"
INTERACTIONS = "ingest.interactions.v1"
IDENTITIES = "ingest.identities.v1"
PROFILES = "profiles.profiles.v1"
SEGMENT_MEMBERSHIP = "segments.membership.v1"
LOYALTY_ACCOUNTS = "loyalty.accounts.v1"
FEEDBACK_SUBMISSIONS = "feedback.submissions.v1"
PRIVACY_ERASURES = "privacy.erasures.v1"

# Internal topics (ours to design; documented in docs/events.md).
API_KEYS = "ingest.apikeys.v1"  # apikey.issued / apikey.revoked: every service keeps a copy of the key hashes
ERASURE_CONFIRMATIONS = {s: f"{s}.erasures.v1" for s in ("ingest", "profiles", "segments", "loyalty", "feedback")}

CONTRACT_TOPICS = (
    PURCHASES,
    INTERACTIONS,
    IDENTITIES,
    PROFILES,
    SEGMENT_MEMBERSHIP,
    LOYALTY_ACCOUNTS,
    FEEDBACK_SUBMISSIONS,
    PRIVACY_ERASURES,
)


INTERNAL_TOPICS = (API_KEYS, *ERASURE_CONFIRMATIONS.values())


def all_topics(partitions: int = 6) -> dict[str, int]:
    """Every topic and its dead-letter topic (one partition is plenty for those)."""
    names = (*CONTRACT_TOPICS, *INTERNAL_TOPICS)
    topics = {name: partitions for name in names}
    topics.update({f"{name}.dlq": 1 for name in names})
    return topics


async def create_all(bootstrap: str, partitions: int = 6) -> None:
    from shared.devstack import ensure_topics

    await ensure_topics(bootstrap, all_topics(partitions))


if __name__ == "__main__":
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    asyncio.run(create_all(bootstrap, int(os.environ.get("CX_TOPIC_PARTITIONS", "6"))))
    print(f"topics ready on {bootstrap}")
