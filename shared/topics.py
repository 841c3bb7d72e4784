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


def forbid_topic_auto_creation() -> None:
    """Make every aiokafka metadata request ask the broker not to create the topics it names.

    aiokafka asks for auto-creation by default. A broker that came back empty (the embedded Tansu)
    then creates each topic a client still knows with its default of 4 partitions, before the owner
    recreates it with 6; messages a producer with the old metadata sends to partitions 4 and 5 are
    acknowledged and never readable. Topics are created only by `ensure_topics`, with their counts.
    """
    from aiokafka.protocol import metadata

    if getattr(metadata.MetadataRequest, "_cx_no_auto_create", False):
        return
    original = metadata.MetadataRequest.__init__

    def without_auto_creation(
        self: metadata.MetadataRequest, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False
    ) -> None:
        original(self, topics, allow_auto_topic_creation)

    metadata.MetadataRequest.__init__ = without_auto_creation
    metadata.MetadataRequest._cx_no_auto_create = True


forbid_topic_auto_creation()  # on import: every process that names a topic has it


async def create_all(bootstrap: str, partitions: int = 6) -> None:
    from shared.devstack import ensure_topics

    await ensure_topics(bootstrap, all_topics(partitions))


if __name__ == "__main__":
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    asyncio.run(create_all(bootstrap, int(os.environ.get("CX_TOPIC_PARTITIONS", "6"))))
    print(f"topics ready on {bootstrap}")
