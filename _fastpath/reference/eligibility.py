"""Who may receive a conversation (spec §2, §3, §4 steps 1-6, §5 "all strategies skip ...", §7).

Pure functions of one shop's storage; nothing here changes state.

- ``has_room``: capacity left; a robot with capacity 0 has no limit (§2).
- ``client_counts``: the agent's login counts as online (a desktop
  workbench, or mobile where the shop enables mobile dispatch) (§2).
- ``available``: ONLINE (not suspended), chat permission, a client that
  counts; never a robot or a deleted agent.
- ``eligible``: available and not full: what a strategy may pick (§5).
- ``contact_state``: step 2, whether a recent contact may still receive:
  present (ONLINE or SUSPENDED), held (OFFLINE within the offline grace) or
  unavailable.
- ``in_roster`` / ``shop_roster``: the shop-wide roster, which step 1 asks
  about and step 6 (or, without groups, the whole shop) picks from: the
  main account where its mode allows (§7 cases A and D), sub-accounts
  (none in case A), proxies that are in a group; never robots or deleted
  agents.
- ``group_roster`` / ``group_eligible``: a group's roster (its members; the
  main account only in case D) and its eligible members.
- ``group_bound``, ``group_robot``, ``group_ready``: step 5.
- ``shop_online``: step 1.

Rosters are lists in ordinal order; a strategy relies on it for its
tie-breaks.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from ..model import Client, MainAccountMode, Presence, Role
from .shop import NO_TIME, Agent, Group, Shop

__all__ = [
    "ContactState",
    "available",
    "client_counts",
    "contact_state",
    "eligible",
    "group_bound",
    "group_eligible",
    "group_ready",
    "group_robot",
    "group_roster",
    "has_room",
    "in_roster",
    "shop_online",
    "shop_roster",
]

ContactState: TypeAlias = Literal["present", "held", "unavailable"]


def has_room(agent: Agent) -> bool:
    """Room for one more conversation; a robot with max_capacity 0 has no limit."""
    if agent.role == Role.ROBOT and agent.max_capacity == 0:
        return True
    return agent.active < agent.max_capacity


def client_counts(shop: Shop, agent: Agent) -> bool:
    """The client the agent is logged in on counts: a desktop, or mobile with mobile dispatch on."""
    return agent.client != Client.MOBILE or shop.config.mobile_dispatch


def available(shop: Shop, agent: Agent) -> bool:
    """ONLINE (not suspended) on a client that counts, with chat permission."""
    return (
        not agent.deleted
        and agent.role != Role.ROBOT
        and agent.chat_permission
        and agent.presence == Presence.ONLINE
        and client_counts(shop, agent)
    )


def eligible(shop: Shop, agent: Agent) -> bool:
    """May receive a new buyer through a strategy: available and not full."""
    return available(shop, agent) and agent.active < agent.max_capacity


def contact_state(shop: Shop, agent: Agent | None, now: int) -> ContactState:
    """Step 2: whether the buyer's recent contact ``agent`` (None: no longer an agent) may receive."""
    if agent is None or agent.deleted or not agent.chat_permission or agent.role == Role.ROBOT:
        return "unavailable"
    if agent.presence in (Presence.ONLINE, Presence.SUSPENDED) and client_counts(shop, agent):
        return "present"
    grace = shop.config.offline_grace_ms
    if (
        agent.presence == Presence.OFFLINE
        and grace > 0
        and agent.offline_at_ms != NO_TIME
        and now - agent.offline_at_ms < grace
    ):
        return "held"
    return "unavailable"


def in_roster(shop: Shop, agent: Agent) -> bool:
    """Member of the shop-wide roster (step 6, or the whole shop without groups; spec §7)."""
    if agent.deleted or agent.role == Role.ROBOT:
        return False
    mode = shop.config.main_account_mode
    if agent.role == Role.MAIN:
        return mode in (MainAccountMode.ONLY_MAIN, MainAccountMode.MEMBER)
    if mode == MainAccountMode.ONLY_MAIN:
        return False
    if agent.role == Role.PROXY:
        return bool(agent.groups)
    return True


def shop_roster(shop: Shop) -> list[Agent]:
    """The shop-wide roster, in ordinal order."""
    return [a for a in shop.agents.values() if in_roster(shop, a)]


def group_roster(shop: Shop, group: Group) -> list[Agent]:
    """The group's members that strategies may use (the main account only in case D), in ordinal order."""
    member_ids = set(group.config.members)
    member_mode = shop.config.main_account_mode == MainAccountMode.MEMBER
    return [a for a in shop.agents.values() if a.agent_id in member_ids and (a.role != Role.MAIN or member_mode)]


def group_eligible(shop: Shop, group: Group) -> list[Agent]:
    """The group's eligible members, in ordinal order."""
    return [a for a in group_roster(shop, group) if eligible(shop, a)]


def group_bound(group: Group, source: str, order_state: int) -> bool:
    """Step 5: the group is bound to this conversation's order state or entry source."""
    return order_state in group.config.order_states or bool(source and source in group.config.sources)


def group_robot(shop: Shop, group: Group) -> Agent | None:
    """Step 5: the group's robot (its own, else the shop's) if its robot is on and has room."""
    if not group.config.robot_enabled:
        return None
    robot_id = group.config.robot_agent_id or shop.config.robot_agent_id
    robot = shop.agents.get(robot_id) if robot_id else None
    if robot is None or robot.deleted or robot.role != Role.ROBOT or not has_room(robot):
        return None
    return robot


def group_ready(shop: Shop, group: Group) -> bool:
    """Step 5: the group can take the conversation now (its robot, or an eligible member)."""
    return group_robot(shop, group) is not None or bool(group_eligible(shop, group))


def shop_online(shop: Shop) -> bool:
    """Step 1: an agent of the shop-wide roster is available (case C: or the main account is)."""
    if any(available(shop, a) for a in shop_roster(shop)):
        return True
    if shop.config.main_account_mode == MainAccountMode.FALLBACK:
        return available(shop, shop.agents[shop.config.main_account])
    return False
