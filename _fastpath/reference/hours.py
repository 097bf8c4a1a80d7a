"""Business hours (spec §10): while a shop is closed step 1 treats it as offline, a closed group
is not a candidate in step 5, and waiting conversations are handed out when it opens.

- ``shop_open`` / ``group_open``: the schedule (``ShopConfig.business_hours``,
  ``GroupConfig.business_hours``, in the shop's time zone; empty: always open) at the
  shop's time, from ``model.hours_state`` (cached until the answer may change: the cache
  is only a shortcut, the answer is a function of the time).
- ``closed``: the decision of §4 for a shop that is online but closed: its recent
  contact if the shop honours them after hours (``recent_contacts_after_hours``), else
  the offline rule (§6).
- Opening. While conversations wait in the queue or staging of a shop with a schedule
  (its own or a group's), a deadline (``TimerKind.HOURS``, key "") is pending at the next
  opening of the shop or one of its groups (``model.hours_next_opening``): set when one
  starts waiting (``on_wait``) or by a configuration change (``configure``). It fires
  (``fire``) at the opening: staging is pushed to each available agent (in registration
  order), the queue is handed out, and the next opening is set while some still wait.
  ``Router.settle`` hands out nothing while the shop is closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model import BusinessHours, TimerKind, WaitKind, hours_next_opening, hours_state
from .eligibility import available
from .shop import Group, Shop

if TYPE_CHECKING:
    from .routing import Router

__all__ = ["configure", "fire", "group_open", "has_hours", "on_wait", "shop_open"]

_KEY = (int(TimerKind.HOURS), "")


def has_hours(shop: Shop) -> bool:
    """The shop or one of its groups has a schedule."""
    return bool(shop.config.business_hours) or any(g.config.business_hours for g in shop.groups.values())


def _open(shop: Shop, key: str, hours: BusinessHours, now: int) -> bool:
    cached = shop.hours_cache.get(key)
    if cached is None or now >= cached[1]:
        cached = hours_state(hours, shop.config.timezone, now)
        shop.hours_cache[key] = cached
    return cached[0]


def shop_open(shop: Shop, now: int) -> bool:
    """Step 1: the shop's business hours are open at ``now``."""
    if not shop.config.business_hours:
        return True
    return _open(shop, "", shop.config.business_hours, now)


def group_open(shop: Shop, group: Group, now: int) -> bool:
    """Step 5: the group's business hours are open at ``now``."""
    if not group.config.business_hours:
        return True
    return _open(shop, "group:" + group.config.group_id, group.config.business_hours, now)


def _next_opening(shop: Shop, after: int) -> int | None:
    tz = shop.config.timezone
    found = [hours_next_opening(shop.config.business_hours, tz, after)]
    found += [hours_next_opening(g.config.business_hours, tz, after) for g in shop.groups.values()]
    times = [t for t in found if t is not None]
    return min(times) if times else None


def _arm(router: Router, shop: Shop, now: int) -> None:
    when = _next_opening(shop, now)
    if when is not None:
        shop.timers[_KEY] = (when, router._timer_seq)
        router._timer_seq += 1


def _waiting(shop: Shop) -> bool:
    return bool(shop.waiting[WaitKind.QUEUE] or shop.waiting[WaitKind.STAGING])


def configure(router: Router, shop: Shop) -> None:
    """After any configuration change (after ``timers.configure``): the next opening again."""
    shop.hours_cache.clear()
    shop.timers.pop(_KEY, None)
    if has_hours(shop) and _waiting(shop):
        _arm(router, shop, shop.clock)


def on_wait(router: Router, shop: Shop, kind: int, now: int) -> None:
    """A conversation starts waiting in ``kind``: the next opening, unless already pending."""
    if kind in (WaitKind.QUEUE, WaitKind.STAGING) and _KEY not in shop.timers and has_hours(shop):
        _arm(router, shop, now)


def fire(router: Router, shop: Shop, now: int) -> None:
    """The opening (the shop's clock is its deadline): hand out what waits, then the next opening."""
    for agent in list(shop.agents.values()):
        if available(shop, agent):
            router.settle(shop, agent)
    router.settle(shop, None)
    if has_hours(shop) and _waiting(shop):
        _arm(router, shop, now)
