"""The strategies (spec §5): each picks one agent from the eligible members of a roster.

``pick`` applies a shop's or group's strategy to ``candidates``: a non-empty
list of eligible agents (``eligibility.eligible``) of one roster, in ordinal
order. The roster is named by ``roster_key``: ``SHOP_ROSTER`` for the
shop-wide roster, else a group id. Only CAPACITY_ROUND_ROBIN needs it, since
its turns are kept per roster and count the roster's full members too.

- LEAST_SATURATION: lowest active / max capacity; ties random.
- FEWEST_TODAY: fewest received today (shop-local day); ties random.
- CAPACITY_ROUND_ROBIN: turns in proportion to capacity, larger first; full
  agents sit out (``pick_round_robin``, state in ``Shop.round_robin``).
- FEWEST_UNREAD: fewest unread; ties to the earliest created, then ordinal.
- WEIGHTED_BUSYNESS: the calm (unread <= busy threshold) first, lowest
  active / weight; if all are busy, lowest unread / weight; ties to the
  higher weight, then random.

Ratios are compared exactly (``Ratio``), as the compiled engine does by
cross-multiplication; random ties draw from the shop's PRNG
(``Shop.rand_below``), and only when there is more than one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..model import Strategy
from .eligibility import group_roster, shop_roster
from .shop import SHOP_ROSTER, Agent, RoundRobin, Shop

__all__ = [
    "Ratio",
    "full_credit",
    "pick",
    "pick_fewest_today",
    "pick_fewest_unread",
    "pick_least_saturation",
    "pick_round_robin",
    "pick_weighted_busyness",
    "random_min",
    "round_robin_build",
]


class Ratio:
    """An exact ratio num/den (den >= 1), compared by cross-multiplication as the compiled engine does."""

    __slots__ = ("den", "num")

    def __init__(self, num: int, den: int) -> None:
        self.num = num
        self.den = den

    def __lt__(self, other: Ratio) -> bool:
        return self.num * other.den < other.num * self.den

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ratio) and self.num * other.den == other.num * self.den

    def __le__(self, other: Ratio) -> bool:
        return not other < self


def pick(shop: Shop, strategy: int, candidates: list[Agent], roster_key: str, now: int) -> Agent:
    """The agent ``strategy`` picks among ``candidates`` (non-empty, eligible, in ordinal order)."""
    if strategy == Strategy.LEAST_SATURATION:
        return pick_least_saturation(shop, candidates)
    if strategy == Strategy.FEWEST_TODAY:
        return pick_fewest_today(shop, candidates, now)
    if strategy == Strategy.FEWEST_UNREAD:
        return pick_fewest_unread(candidates)
    if strategy == Strategy.WEIGHTED_BUSYNESS:
        return pick_weighted_busyness(shop, candidates)
    return pick_round_robin(shop, roster_key, candidates)


def pick_least_saturation(shop: Shop, candidates: list[Agent]) -> Agent:
    """LEAST_SATURATION: lowest active / max capacity; ties random."""
    return random_min(shop, candidates, lambda a: Ratio(a.active, a.max_capacity))


def pick_fewest_today(shop: Shop, candidates: list[Agent], now: int) -> Agent:
    """FEWEST_TODAY: fewest conversations received today; ties random."""
    return random_min(shop, candidates, lambda a: shop.today_of(a, now))


def pick_fewest_unread(candidates: list[Agent]) -> Agent:
    """FEWEST_UNREAD: fewest unread; ties to the account created earliest, then the lower ordinal."""
    return min(candidates, key=lambda a: (a.unread, a.created_at_ms, a.ordinal))


def pick_weighted_busyness(shop: Shop, candidates: list[Agent]) -> Agent:
    """WEIGHTED_BUSYNESS: calm agents by active / weight, else everyone by unread / weight;
    ties to the higher weight, then random."""
    threshold = shop.config.busy_threshold
    calm = [a for a in candidates if a.unread <= threshold]
    if calm:
        return random_min(shop, calm, lambda a: (Ratio(a.active, a.weight), -a.weight))
    return random_min(shop, candidates, lambda a: (Ratio(a.unread, a.weight), -a.weight))


def random_min(shop: Shop, candidates: list[Agent], key: Callable[[Agent], Any]) -> Agent:
    """One of the candidates with the lowest ``key``, chosen with the shop's PRNG."""
    best = min(key(a) for a in candidates)
    ties = [a for a in candidates if key(a) == best]
    return ties[shop.rand_below(len(ties))]


def round_robin_build(shop: Shop, roster_key: str) -> RoundRobin:
    """A roster's round-robin state: its members, larger capacity first, each with capacity / gcd turns."""
    members = shop_roster(shop) if roster_key == SHOP_ROSTER else group_roster(shop, shop.groups[roster_key])
    members.sort(key=lambda a: (-a.max_capacity, a.ordinal))
    full = full_credit(members)
    return RoundRobin(order=[a.agent_id for a in members], credit=dict(full), full_credit=full)


def full_credit(members: list[Agent]) -> dict[str, int]:
    """Each member's turns per round-robin cycle: its capacity divided by the gcd of all the capacities."""
    divisor = 0
    for a in members:
        divisor = math.gcd(divisor, a.max_capacity)
    return {a.agent_id: a.max_capacity // divisor for a in members}


def pick_round_robin(shop: Shop, roster_key: str, candidates: list[Agent]) -> Agent:
    """CAPACITY_ROUND_ROBIN: passes over the roster in capacity order; full agents sit out.

    A pass goes on from the cursor, then starts over from the top; when no
    candidate has a turn left, every member's turns are refilled.
    """
    state = shop.round_robin.get(roster_key)
    if state is None:
        state = round_robin_build(shop, roster_key)
        shop.round_robin[roster_key] = state
    able = {a.agent_id for a in candidates}
    order = state.order
    for start, refill in ((state.cursor, False), (0, False), (0, True)):
        if refill:
            state.credit = dict(state.full_credit)
        for i in range(start, len(order)):
            agent_id = order[i]
            if state.credit[agent_id] > 0 and agent_id in able:
                state.credit[agent_id] -= 1
                state.cursor = i + 1
                return shop.agents[agent_id]
        state.cursor = 0
    raise AssertionError("round robin found no candidate")  # candidates is never empty
