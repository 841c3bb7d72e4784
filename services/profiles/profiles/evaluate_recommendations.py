"""Offline evaluation: hit rate@k of co-occurrence recommendations against the popular-items baseline.

`python -m profiles.evaluate_recommendations [--customers N] [--seed S] [--k K]` generates a
synthetic shop with structure (products in taste groups, customers buying mostly within one or two
groups, plus popular products everyone buys), holds out one purchase per customer, fits on the
rest, and reports how often the held-out product is in the top k.
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from dataclasses import dataclass

from profiles.recommendations import Signal, fit, recommend


@dataclass(frozen=True)
class Evaluation:
    customers: int
    k: int
    hit_rate: float
    popular_hit_rate: float


def synthetic_shop(*, customers: int = 2000, products: int = 400, groups: int = 20, seed: int = 7) -> list[Signal]:
    """Purchases and views with structure: 75% of a customer's purchases come from their own groups."""
    rng = random.Random(seed)
    per_group = products // groups
    catalogue = [[f"SKU-{g:02d}-{i:03d}" for i in range(per_group)] for g in range(groups)]
    everything = [sku for group in catalogue for sku in group]
    # Popularity within a group and overall is skewed, as in real shops.
    group_weights = [1.0 / (i + 1) ** 0.8 for i in range(per_group)]
    overall_weights = [1.0 / (i + 1) ** 0.9 for i in range(len(everything))]
    shuffled = everything[:]
    rng.shuffle(shuffled)
    signals: list[Signal] = []
    for c in range(customers):
        customer = f"cus-{c:05d}"
        tastes = rng.sample(range(groups), rng.choice((1, 1, 2)))
        bought: set[str] = set()
        for _ in range(rng.randint(3, 9)):
            if rng.random() < 0.75:
                bought.add(rng.choices(catalogue[rng.choice(tastes)], weights=group_weights)[0])
            else:
                bought.add(rng.choices(shuffled, weights=overall_weights)[0])
        viewed = {rng.choice(catalogue[rng.choice(tastes)]) for _ in range(rng.randint(0, 6))}
        signals += [Signal(customer, sku, True) for sku in sorted(bought)]
        signals += [Signal(customer, sku, False) for sku in sorted(viewed - bought)]
    return signals


def evaluate(signals: list[Signal], *, k: int = 10, view_weight: float = 0.25, seed: int = 11) -> Evaluation:
    """Hold out one bought product per customer with at least two; fit on everything else."""
    rng = random.Random(seed)
    bought: dict[str, list[str]] = defaultdict(list)
    for s in signals:
        if s.bought:
            bought[s.customer].append(s.sku)
    held_out = {c: rng.choice(sorted(skus)) for c, skus in bought.items() if len(skus) >= 2}
    training = [s for s in signals if not (s.bought and held_out.get(s.customer) == s.sku)]
    model = fit(training, view_weight=view_weight, neighbours=50)
    histories: dict[str, dict[str, float]] = defaultdict(dict)
    owned: dict[str, set[str]] = defaultdict(set)
    for s in training:
        weight = 1.0 if s.bought else view_weight
        histories[s.customer][s.sku] = max(histories[s.customer].get(s.sku, 0.0), weight)
        if s.bought:
            owned[s.customer].add(s.sku)
    hits = popular_hits = 0
    for customer, target in held_out.items():
        mine = owned[customer]
        picks = recommend(
            neighbours=model.neighbours, popular=model.popular, history=histories[customer], bought=mine, limit=k
        )
        hits += target in {p.sku for p in picks}
        baseline = recommend(neighbours={}, popular=model.popular, history={}, bought=mine, limit=k)
        popular_hits += target in {p.sku for p in baseline}
    n = len(held_out)
    return Evaluation(
        customers=n, k=k, hit_rate=hits / n if n else 0.0, popular_hit_rate=popular_hits / n if n else 0.0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--products", type=int, default=400)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--view-weight", type=float, default=0.25)
    args = parser.parse_args()
    signals = synthetic_shop(customers=args.customers, products=args.products, groups=args.groups, seed=args.seed)
    result = evaluate(signals, k=args.k, view_weight=args.view_weight)
    print(f"customers evaluated: {result.customers} (one held-out purchase each)")
    print(f"hit rate@{result.k}, co-occurrence: {result.hit_rate:.3f}")
    print(f"hit rate@{result.k}, popular items: {result.popular_hit_rate:.3f}")


if __name__ == "__main__":
    main()
