"""shared.runtime.settle_heap: what start-up leaves alive is frozen; the young threshold as asked."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.runtime import settle_heap


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector")
def test_settle_heap_freezes_what_is_alive() -> None:
    alive = [object() for _ in range(10)]
    settle_heap()
    assert gc.get_freeze_count() >= len(alive)


@pytest.mark.usefixtures("collector")
def test_settle_heap_sets_the_young_threshold_and_keeps_the_older_ones() -> None:
    gc.set_threshold(700, 10, 10)
    settle_heap(200_000)
    assert gc.get_threshold() == (200_000, 10, 10)
    settle_heap()  # an API: frozen, thresholds as they were
    assert gc.get_threshold() == (200_000, 10, 10)
