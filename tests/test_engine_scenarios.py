"""Scenario tests: one test per behaviour-stating sentence of the dispatch rules.

Every test runs against both engines (``engine_cls``: the pure-Python reference
and the compiled core). Expected values are derived by hand from
``/work/shared/spec/dispatch-rules.md``; section numbers below refer to it.

Conventions used throughout:

- shop ``tb1`` with main account ``tb1`` (auto-created, OFFLINE, capacity 100
  unless reconfigured) and sub-accounts ``tb1:a``, ``tb1:b``, ...;
- a shop without groups answers a strategy pick with reason GROUP and no group;
- times are integer milliseconds; ``T0`` is an arbitrary instant.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from _fastpath import (
    AgentConfig,
    AlreadyExistsError,
    Client,
    ConversationEvent,
    ConversationType,
    GroupConfig,
    InvalidArgumentError,
    MainAccountMode,
    NotFoundError,
    OfflineRule,
    OrderState,
    Presence,
    Reason,
    Role,
    ShopConfig,
    Strategy,
)

SHOP = "tb1"
MAIN = "tb1"
A = "tb1:a"
B = "tb1:b"
C = "tb1:c"
BOT = "tb1:bot"
PROXY = "svc:proxy"

T0 = 1_700_000_000_000
SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN

SEEDS = range(40)


# ----------------------------------------------------------------- helpers


def make_shop(engine, **settings) -> None:
    engine.put_shop(ShopConfig(shop_id=SHOP, main_account=MAIN, **settings))


def add_agent(engine, agent_id, cap=10, online=True, at=T0, client=Client.DESKTOP, **kw) -> None:
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=agent_id, max_capacity=cap, **kw))
    if online:
        engine.set_presence(SHOP, agent_id, Presence.ONLINE, client, at)


def presence(engine, agent_id, state, at=T0, client=Client.DESKTOP) -> None:
    engine.set_presence(SHOP, agent_id, state, client, at)


def add_group(engine, group_id, members, **kw) -> None:
    engine.put_group(GroupConfig(shop_id=SHOP, group_id=group_id, members=tuple(members), **kw))


def dispatch(engine, conv, buyer, at=T0, **kw):
    return engine.dispatch(SHOP, buyer, conv, at, **kw)


def assign(engine, conv, buyer, agent_id, at=T0) -> None:
    """An assignment made outside the dispatcher (ConversationEvent.ASSIGNED)."""
    engine.conversation_event(SHOP, conv, ConversationEvent.ASSIGNED, at, buyer_id=buyer, agent_id=agent_id)


def preload(engine, agent_id, n, prefix=None, at=T0) -> list[str]:
    """Give ``agent_id`` ``n`` assigned (unanswered) conversations of distinct buyers."""
    prefix = prefix or f"pre-{agent_id}"
    convs = [f"{prefix}-{i}" for i in range(n)]
    for conv in convs:
        assign(engine, conv, f"buyer-{conv}", agent_id, at)
    return convs


def reply(engine, conv, agent_id="", at=T0) -> None:
    engine.conversation_event(SHOP, conv, ConversationEvent.AGENT_REPLY, at, agent_id=agent_id)


def buyer_message(engine, conv, at=T0) -> None:
    engine.conversation_event(SHOP, conv, ConversationEvent.BUYER_MESSAGE, at)


def close(engine, conv, at=T0) -> None:
    engine.conversation_event(SHOP, conv, ConversationEvent.CLOSED, at)


def transfer(engine, conv, at=T0, to_agent="", to_group=""):
    return engine.conversation_event(
        SHOP, conv, ConversationEvent.TRANSFERRED, at, to_agent_id=to_agent, to_group_id=to_group
    )


def agent_state(engine, agent_id) -> dict:
    for entry in engine.shop_state(SHOP)["agents"]:
        if entry["agent_id"] == agent_id:
            return entry
    raise AssertionError(f"{agent_id} not in shop state")


def load(engine, agent_id) -> tuple[int, int, int]:
    """(active, unread, today) of an agent."""
    s = agent_state(engine, agent_id)
    return s["active"], s["unread"], s["today"]


def waiting(engine, kind) -> list[str]:
    return [w["conversation_id"] for w in engine.shop_state(SHOP)[kind]]


def picked(result):
    """(reason, agent, group) of a dispatch answer."""
    reason, agent_id, group_id, _trace = result
    return reason, agent_id, group_id


def fresh(engine_cls, seed=0, **settings):
    engine = engine_cls(seed=seed)
    make_shop(engine, **settings)
    return engine


# ============================================================ section 3


@pytest.mark.parametrize(
    "conv_type",
    [ConversationType.SHOP_TO_SHOP, ConversationType.PLATFORM_TO_SHOP, ConversationType.BUYER_TO_BUYER],
)
def test_direct_conversation_types_answer_the_addressed_account_and_change_nothing(engine_cls, conv_type):
    """§3: "Shop → shop, platform staff → shop, and buyer → buyer conversations are
    point-to-point: the answer is the addressed account itself, reason DIRECT, and
    no state changes." """
    engine = fresh(engine_cls, seed=7)
    add_agent(engine, A)
    add_agent(engine, B)
    reply_conv = "c-before"
    dispatch(engine, reply_conv, "buyer-1")
    before = engine.shop_state(SHOP)
    contact_before = engine.recent_contact(SHOP, "buyer-1")

    result = engine.dispatch(SHOP, "buyer-1", "c-direct", T0 + HOUR, conv_type=conv_type, to_account="tb2:bob")

    assert picked(result) == (Reason.DIRECT, "tb2:bob", None)
    assert engine.shop_state(SHOP) == before  # no load, no clock move, nothing waiting
    assert engine.conversation(SHOP, "c-direct") is None
    assert engine.recent_contact(SHOP, "buyer-1") == contact_before
    assert engine.drain_outbox() == []
    # The id was not taken: a buyer→shop conversation may still use it.
    assert dispatch(engine, "c-direct", "buyer-1", T0 + HOUR)[0] == Reason.GROUP


def test_direct_does_not_touch_the_tie_breaking_prng(engine_cls):
    """§3 "no state changes" includes the random state: a DIRECT answer between two
    dispatches does not change which tied agent the next dispatch picks."""
    answers = []
    for with_direct in (False, True):
        engine = fresh(engine_cls, seed=11)
        add_agent(engine, A)
        add_agent(engine, B)
        run = []
        for i in range(8):
            if with_direct:
                engine.dispatch(SHOP, "x", f"d{i}", T0, conv_type=ConversationType.SHOP_TO_SHOP, to_account=B)
            run.append(dispatch(engine, f"c{i}", f"buyer-{i}")[1])
            close(engine, f"c{i}")
        answers.append(run)
    assert answers[0] == answers[1]


# ============================================================ section 4, step 1


def test_shop_with_nobody_online_applies_the_offline_rule(engine_cls):
    """§4.1: "If no agent of the shop is ONLINE and not suspended ..., apply the
    shop's offline rule (section 6). Reason OFFLINE_*." """
    engine = fresh(engine_cls, offline_rule=OfflineRule.MAIN_ACCOUNT)
    add_agent(engine, A, online=False)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.OFFLINE_MAIN_ACCOUNT, MAIN, None)


def test_only_suspended_agents_means_the_shop_is_offline(engine_cls):
    """§4.1: "ONLINE and not suspended": a shop whose only present agent is
    SUSPENDED applies its offline rule."""
    engine = fresh(engine_cls, offline_rule=OfflineRule.MESSAGE_POOL)
    add_agent(engine, A)
    presence(engine, A, Presence.SUSPENDED)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.OFFLINE_MESSAGE_POOL, None, None)
    assert load(engine, A) == (0, 0, 0)


def test_online_agent_without_chat_permission_does_not_make_the_shop_online(engine_cls):
    """§4.1: "(with chat permission, ...)"."""
    engine = fresh(engine_cls, offline_rule=OfflineRule.MESSAGE_POOL)
    add_agent(engine, A, chat_permission=False)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.OFFLINE_MESSAGE_POOL, None, None)


# ============================================================ section 4, step 2 (recent contact)


def _contact_setup(engine_cls, **settings):
    """A has served buyer-1 (replied at T0) and is busier than B."""
    engine = fresh(engine_cls, **settings)
    add_agent(engine, A)
    add_agent(engine, B)
    assign(engine, "c1", "buyer-1", A)
    reply(engine, "c1", A, at=T0)
    return engine


def test_recent_contact_gets_the_conversation(engine_cls):
    """§4.2: "If the buyer's recent contact in this shop is younger than the
    affinity window ... and that agent is ONLINE ..., it gets the conversation
    (reason AFFINITY)" — even though the strategy would pick the idler B."""
    engine = _contact_setup(engine_cls)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + MIN)) == (Reason.AFFINITY, A, None)
    # Another buyer is routed by the strategy: B has 0/10 < A's 2/10.
    assert picked(dispatch(engine, "c3", "buyer-2", T0 + MIN)) == (Reason.GROUP, B, None)


def test_recent_contact_wins_even_when_busy(engine_cls):
    """§4.2: "it gets the conversation (reason AFFINITY), even when it is busy"."""
    engine = _contact_setup(engine_cls, strategy=Strategy.WEIGHTED_BUSYNESS, busy_threshold=4)
    preload(engine, A, 6)  # unread 6 > 4: busy
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + MIN)) == (Reason.AFFINITY, A, None)


def test_affinity_window_72h_just_inside(engine_cls):
    """§4.2: "younger than the affinity window (default 72 hours)": 1 ms before 72 h
    after the reply the contact still holds."""
    engine = _contact_setup(engine_cls)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + 72 * HOUR - 1)) == (Reason.AFFINITY, A, None)


def test_affinity_window_72h_just_outside(engine_cls):
    """§4.2: at exactly 72 h the contact is no longer younger than the window: the
    buyer is routed as a new one (B is the idler)."""
    engine = _contact_setup(engine_cls)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + 72 * HOUR)) == (Reason.GROUP, B, None)


def test_affinity_window_is_a_shop_setting(engine_cls):
    """§4.2 "(default 72 hours)": a shop may set another window, e.g. 1 hour."""
    engine = _contact_setup(engine_cls, affinity_window_ms=HOUR)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + HOUR - 1)) == (Reason.AFFINITY, A, None)
    engine = _contact_setup(engine_cls, affinity_window_ms=HOUR)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + HOUR)) == (Reason.GROUP, B, None)


def test_shortened_affinity_window_applies_to_existing_contacts(engine_cls):
    """§2: the recent contact is kept "with the time of that contact"; §4.2: it
    counts if it "is younger than the affinity window". After the shop shortens
    its window from 72 h to 1 h, a 2-hour-old contact is no longer younger than
    the window."""
    engine = _contact_setup(engine_cls)
    make_shop(engine, affinity_window_ms=HOUR)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + 2 * HOUR)) == (Reason.GROUP, B, None)


def test_lengthened_affinity_window_applies_to_existing_contacts(engine_cls):
    """§2/§4.2 as above, the other way: a contact made under a 1 h window is
    2 hours old, hence younger than the shop's new 72 h window."""
    engine = _contact_setup(engine_cls, affinity_window_ms=HOUR)
    make_shop(engine, affinity_window_ms=72 * HOUR)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + 2 * HOUR)) == (Reason.AFFINITY, A, None)


def test_recent_contact_is_timed_at_the_latest_reply(engine_cls):
    """§8: "the replying agent becomes the buyer's recent contact, timed at the
    reply": a later reply restarts the 72 h window."""
    engine = _contact_setup(engine_cls)
    reply(engine, "c1", A, at=T0 + 48 * HOUR)
    # 100 h after the first reply, 52 h after the second one.
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + 100 * HOUR)) == (Reason.AFFINITY, A, None)


def test_suspended_agent_gets_its_recent_contact_but_no_new_buyer(engine_cls):
    """§2: SUSPENDED "takes only its recent contacts, no new buyers"; §4.2 "ONLINE
    or SUSPENDED"."""
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B)
    assign(engine, "c1", "buyer-1", A)
    reply(engine, "c1", A)
    close(engine, "c1")
    preload(engine, B, 5)  # B is far busier than A: only suspension keeps A out
    presence(engine, A, Presence.SUSPENDED, at=T0 + MIN)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + 2 * MIN)) == (Reason.AFFINITY, A, None)
    for i in range(3):
        assert picked(dispatch(engine, f"n{i}", f"new-{i}", T0 + 2 * MIN)) == (Reason.GROUP, B, None)


def test_assignment_alone_is_not_a_recent_contact(engine_cls):
    """§8: "An assignment alone does not make a recent contact: the agent must have
    spoken to the buyer (replied) or received the conversation by transfer." """
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B)
    assign(engine, "c1", "buyer-1", A)  # A: 1/10, B: 0/10
    assert engine.recent_contact(SHOP, "buyer-1") is None
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + MIN)) == (Reason.GROUP, B, None)
    # B was assigned c2 by dispatch, did not reply either: still no contact.
    assert engine.recent_contact(SHOP, "buyer-1") is None


def test_reply_makes_the_recent_contact(engine_cls):
    """§8: "agent reply (...; the replying agent becomes the buyer's recent
    contact, timed at the reply)"."""
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B)
    assign(engine, "c1", "buyer-1", A)
    reply(engine, "c1", A, at=T0 + MIN)
    assert engine.recent_contact(SHOP, "buyer-1")[0] == A
    preload(engine, A, 3)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + 2 * MIN)) == (Reason.AFFINITY, A, None)


def test_transfer_makes_the_recent_contact(engine_cls):
    """§8: "transferred/forwarded to another agent ... (the new agent becomes the
    recent contact ...)"."""
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B)
    assign(engine, "c1", "buyer-1", A)
    assert transfer(engine, "c1", T0 + MIN, to_agent=B) == B
    assert engine.recent_contact(SHOP, "buyer-1")[0] == B
    preload(engine, B, 3)  # B: 4/10, A: 0/10
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + 2 * MIN)) == (Reason.AFFINITY, B, None)


def test_offline_grace_holds_the_conversation_for_a_recently_offline_contact(engine_cls):
    """§4.2: "an offline grace (e.g. 10 minutes): if that agent went OFFLINE less
    than the grace ago, the conversation is still given to it (reason
    AFFINITY_HELD)"."""
    engine = _contact_setup(engine_cls, offline_grace_ms=10 * MIN)
    presence(engine, A, Presence.OFFLINE, at=T0 + HOUR)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + HOUR + 10 * MIN - 1)) == (Reason.AFFINITY_HELD, A, None)
    assert load(engine, A)[0] == 2


def test_offline_grace_expired_routes_the_buyer_as_new(engine_cls):
    """§4.2: "after the grace, the buyer is routed as a new one"."""
    engine = _contact_setup(engine_cls, offline_grace_ms=10 * MIN)
    presence(engine, A, Presence.OFFLINE, at=T0 + HOUR)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + HOUR + 10 * MIN)) == (Reason.GROUP, B, None)
    assert load(engine, A)[0] == 1


def test_without_grace_an_offline_contact_is_not_held(engine_cls):
    """§4.2: the grace is optional per shop; without it an offline contact is skipped."""
    engine = _contact_setup(engine_cls)
    presence(engine, A, Presence.OFFLINE, at=T0 + HOUR)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + HOUR + 1)) == (Reason.GROUP, B, None)


def test_affinity_may_exceed_capacity_by_default(engine_cls):
    """§4.2: "Whether affinity may exceed max capacity is a shop setting (default:
    yes — consistency of service comes first)." """
    engine = fresh(engine_cls)
    add_agent(engine, A, cap=1)
    add_agent(engine, B)
    assign(engine, "c1", "buyer-1", A)
    reply(engine, "c1", A)  # A is full (1/1) and buyer-1's recent contact
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + MIN)) == (Reason.AFFINITY, A, None)
    assert load(engine, A)[0] == 2


def test_affinity_may_not_exceed_capacity_when_the_shop_says_so(engine_cls):
    """§4.2: with the setting off, a full recent contact does not get it."""
    engine = fresh(engine_cls, affinity_may_exceed_capacity=False)
    add_agent(engine, A, cap=1)
    add_agent(engine, B)
    assign(engine, "c1", "buyer-1", A)
    reply(engine, "c1", A)
    assert picked(dispatch(engine, "c2", "buyer-1", T0 + MIN)) == (Reason.GROUP, B, None)
    assert load(engine, A)[0] == 1


# ============================================================ section 4, step 3 (exclusive)


def _exclusive_setup(engine_cls, enabled=True):
    engine = fresh(engine_cls, exclusive_direct=enabled)
    add_agent(engine, A)
    add_agent(engine, B)
    preload(engine, A, 3)  # A 3/10, B 0/10: the strategy alone picks B
    engine.set_exclusive_agent(SHOP, "vip", A)
    return engine


def test_exclusive_agent_gets_its_buyer_when_enabled(engine_cls):
    """§4.3: "If the shop enabled "direct to exclusive agent" and the buyer has an
    exclusive agent who is ONLINE, it gets the conversation (reason EXCLUSIVE)." """
    engine = _exclusive_setup(engine_cls)
    assert picked(dispatch(engine, "c1", "vip")) == (Reason.EXCLUSIVE, A, None)


def test_exclusive_agent_ignored_when_disabled(engine_cls):
    """§4.3: only "If the shop enabled" it."""
    engine = _exclusive_setup(engine_cls, enabled=False)
    assert picked(dispatch(engine, "c1", "vip")) == (Reason.GROUP, B, None)


@pytest.mark.parametrize("state", [Presence.OFFLINE, Presence.SUSPENDED])
def test_exclusive_agent_not_online_falls_through(engine_cls, state):
    """§4.3: "who is ONLINE": an offline (or suspended) exclusive agent does not get
    it; the next steps route the buyer."""
    engine = _exclusive_setup(engine_cls)
    presence(engine, A, state)
    assert picked(dispatch(engine, "c1", "vip")) == (Reason.GROUP, B, None)


def test_deleted_exclusive_pair_no_longer_applies(engine_cls):
    """§8 Configuration: "exclusive-agent pairs" change the state both ways."""
    engine = _exclusive_setup(engine_cls)
    assert engine.exclusive_agent(SHOP, "vip") == A
    engine.delete_exclusive_agent(SHOP, "vip")
    assert engine.exclusive_agent(SHOP, "vip") is None
    assert picked(dispatch(engine, "c1", "vip")) == (Reason.GROUP, B, None)


def test_recent_contact_comes_before_exclusive_agent(engine_cls):
    """§4: "the steps run in this order; the first one that yields an agent wins":
    step 2 (recent contact) before step 3 (exclusive)."""
    engine = _exclusive_setup(engine_cls)
    assign(engine, "c0", "vip", B)
    reply(engine, "c0", B)
    assert picked(dispatch(engine, "c1", "vip", T0 + MIN)) == (Reason.AFFINITY, B, None)


# ============================================================ section 4, step 4 (robot first)


def _robot_shop(engine_cls, robot_cap=0, **settings):
    engine = fresh(engine_cls)
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=BOT, role=Role.ROBOT, max_capacity=robot_cap))
    make_shop(engine, robot_first=True, robot_agent_id=BOT, **settings)
    add_agent(engine, A)
    return engine


def test_robot_first(engine_cls):
    """§4.4: "If the shop enabled robot-first reception, the shop's robot gets it
    (reason ROBOT)." §2: a robot "has no capacity limit unless one is set"."""
    engine = _robot_shop(engine_cls)
    for i in range(30):
        assert picked(dispatch(engine, f"c{i}", f"buyer-{i}")) == (Reason.ROBOT, BOT, None)
    assert load(engine, A) == (0, 0, 0)


def test_robot_with_a_capacity_set_passes_on_when_full(engine_cls):
    """§2: "A robot ... has no capacity limit unless one is set"."""
    engine = _robot_shop(engine_cls, robot_cap=2)
    assert dispatch(engine, "c1", "buyer-1")[1] == BOT
    assert dispatch(engine, "c2", "buyer-2")[1] == BOT
    assert picked(dispatch(engine, "c3", "buyer-3")) == (Reason.GROUP, A, None)


def test_recent_contact_comes_before_robot_first(engine_cls):
    """§4: step 2 (recent contact) runs before step 4 (robot first)."""
    engine = _robot_shop(engine_cls)
    assign(engine, "c0", "buyer-1", A)
    reply(engine, "c0", A)
    assert picked(dispatch(engine, "c1", "buyer-1", T0 + MIN)) == (Reason.AFFINITY, A, None)


def test_robot_first_still_needs_the_shop_online(engine_cls):
    """§4: step 1 (is the shop online?) runs before robot first."""
    engine = _robot_shop(engine_cls)
    presence(engine, A, Presence.OFFLINE)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.OFFLINE_MAIN_ACCOUNT, MAIN, None)


# ============================================================ section 4, step 5 (groups)


def _two_groups(engine_cls, seed=0, **settings):
    """pre-sale (A) bound to NO_ORDER/UNPAID, after-sale (B) bound to the rest, source group (C)."""
    engine = fresh(engine_cls, seed=seed, **settings)
    add_agent(engine, A)
    add_agent(engine, B)
    add_agent(engine, C)
    add_group(engine, "pre", [A], order_states=(OrderState.NO_ORDER, OrderState.UNPAID))
    add_group(engine, "after", [B], order_states=(OrderState.PAID_UNSHIPPED, OrderState.SHIPPED, OrderState.AFTER_SALE))
    add_group(engine, "live", [C], sources=("LIVE_ROOM",))
    return engine


def test_group_bound_to_order_state(engine_cls):
    """§4.5: "The candidate groups are those bound to this conversation's order
    state ..."; "The answer names the group." """
    engine = _two_groups(engine_cls)
    for i in range(5):
        assert picked(dispatch(engine, f"u{i}", f"u{i}", order_state=OrderState.UNPAID)) == (Reason.GROUP, A, "pre")
        assert picked(dispatch(engine, f"s{i}", f"s{i}", order_state=OrderState.AFTER_SALE)) == (
            Reason.GROUP,
            B,
            "after",
        )


def test_group_bound_to_entry_source(engine_cls):
    """§4.5: "... or entry source"."""
    engine = _two_groups(engine_cls)
    for i in range(5):
        assert picked(dispatch(engine, f"l{i}", f"l{i}", source="LIVE_ROOM")) == (Reason.GROUP, C, "live")


def test_unbound_order_state_spreads_over_all_groups(engine_cls):
    """§4.5: "if none is bound to it, every group of the shop is a candidate
    (unbound traffic spreads over all groups)" and "one group is chosen at random
    (seeded, uniform)": over many seeds every group is chosen."""
    seen = set()
    for seed in SEEDS:
        engine = engine_cls(seed=seed)
        make_shop(engine)
        add_agent(engine, A)
        add_agent(engine, B)
        add_group(engine, "pre", [A], order_states=(OrderState.UNPAID,))
        add_group(engine, "after", [B], order_states=(OrderState.AFTER_SALE,))
        reason, agent_id, group_id = picked(dispatch(engine, "c1", "buyer-1", order_state=OrderState.SHIPPED))
        assert reason == Reason.GROUP
        assert (agent_id, group_id) in {(A, "pre"), (B, "after")}
        seen.add(group_id)
    assert seen == {"pre", "after"}


def test_only_groups_that_can_take_it_are_drawn(engine_cls):
    """§4.5: "Among the candidates that can take the conversation now (robot on, or
    at least one ONLINE, not suspended, not full member), one group is chosen"."""
    for seed in SEEDS:
        engine = engine_cls(seed=seed)
        make_shop(engine)
        add_agent(engine, A, cap=1)
        add_agent(engine, B)
        add_agent(engine, C)
        presence(engine, C, Presence.SUSPENDED)
        preload(engine, A, 1)  # A is full
        add_group(engine, "g1", [A], order_states=(OrderState.UNPAID,))
        add_group(engine, "g2", [B], order_states=(OrderState.UNPAID,))
        add_group(engine, "g3", [C], order_states=(OrderState.UNPAID,))
        assert picked(dispatch(engine, "c1", "buyer-1", order_state=OrderState.UNPAID)) == (Reason.GROUP, B, "g2")


def test_group_robot_gets_the_conversation(engine_cls):
    """§4.5: "If that group has its robot on, the robot gets it (reason ROBOT)";
    "The answer names the group." """
    engine = fresh(engine_cls)
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=BOT, role=Role.ROBOT))
    add_agent(engine, A)
    add_agent(engine, B)
    add_group(engine, "pre", [A], order_states=(OrderState.UNPAID,), robot_enabled=True, robot_agent_id=BOT)
    add_group(engine, "after", [B], order_states=(OrderState.AFTER_SALE,))
    assert picked(dispatch(engine, "c1", "buyer-1", order_state=OrderState.UNPAID)) == (Reason.ROBOT, BOT, "pre")
    assert picked(dispatch(engine, "c2", "buyer-2", order_state=OrderState.AFTER_SALE)) == (Reason.GROUP, B, "after")
    assert load(engine, A) == (0, 0, 0)


def test_group_with_robot_on_can_take_it_without_online_members(engine_cls):
    """§4.5: a group "can take the conversation now" when its "robot [is] on"."""
    engine = fresh(engine_cls)
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=BOT, role=Role.ROBOT))
    make_shop(engine, robot_agent_id=BOT)  # the group uses the shop's robot
    add_agent(engine, A, online=False)
    add_agent(engine, B)
    add_group(engine, "pre", [A], order_states=(OrderState.UNPAID,), robot_enabled=True)
    add_group(engine, "after", [B], order_states=(OrderState.AFTER_SALE,))
    assert picked(dispatch(engine, "c1", "buyer-1", order_state=OrderState.UNPAID)) == (Reason.ROBOT, BOT, "pre")


def test_group_strategy_overrides_the_shops(engine_cls):
    """§4.5: "the group's strategy (its own, else the shop's; section 5)"."""
    engine = fresh(engine_cls, strategy=Strategy.LEAST_SATURATION)
    add_agent(engine, A, cap=10, created_at_ms=2000)
    add_agent(engine, B, cap=10, created_at_ms=1000)
    # A: 3 active, 0 unread (30%). B: 1 active, 1 unread (10%).
    for conv in preload(engine, A, 3):
        reply(engine, conv, A)
    preload(engine, B, 1)
    add_group(engine, "g", [A, B], strategy=Strategy.FEWEST_UNREAD)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.GROUP, A, "g")
    add_group(engine, "g", [A, B])  # no override: the shop's LEAST_SATURATION
    assert picked(dispatch(engine, "c2", "buyer-2")) == (Reason.GROUP, B, "g")


# ============================================================ section 4, step 6 (fallback)


def test_fallback_to_an_agent_in_no_group_when_the_bound_group_is_full(engine_cls):
    """§4.6: "If no member of the candidate groups can take it, any other eligible
    online agent of the shop takes it by the same strategy: ... sub-accounts with
    chat permission that are in no group ... (reason FALLBACK)"."""
    engine = fresh(engine_cls)
    add_agent(engine, A, cap=1)
    add_agent(engine, B)
    add_agent(engine, C)
    add_group(engine, "pre", [A], order_states=(OrderState.UNPAID,))
    add_group(engine, "after", [B], order_states=(OrderState.AFTER_SALE,))
    preload(engine, A, 1)  # A full
    preload(engine, B, 2)  # B 2/10, C 0/10 -> C by LEAST_SATURATION
    assert picked(dispatch(engine, "c1", "buyer-1", order_state=OrderState.UNPAID)) == (Reason.FALLBACK, C, None)


def test_fallback_to_a_member_of_another_group(engine_cls):
    """§4.6: "... members of other groups ..."."""
    engine = fresh(engine_cls)
    add_agent(engine, A, cap=1)
    add_agent(engine, B)
    add_group(engine, "pre", [A], order_states=(OrderState.UNPAID,))
    add_group(engine, "after", [B], order_states=(OrderState.AFTER_SALE,))
    preload(engine, A, 1)
    assert picked(dispatch(engine, "c1", "buyer-1", order_state=OrderState.UNPAID)) == (Reason.FALLBACK, B, None)


def test_fallback_uses_the_shop_strategy(engine_cls):
    """§4.6: "by the same strategy" — here FEWEST_UNREAD: fewest unread wins."""
    engine = fresh(engine_cls, strategy=Strategy.FEWEST_UNREAD)
    add_agent(engine, A, cap=1)
    add_agent(engine, B, created_at_ms=1)
    add_agent(engine, C, created_at_ms=2)
    add_group(engine, "pre", [A], order_states=(OrderState.UNPAID,))
    preload(engine, A, 1)
    preload(engine, B, 2)
    for conv in preload(engine, C, 4):
        reply(engine, conv, C)  # C: 4 active but 0 unread
    assert picked(dispatch(engine, "c1", "buyer-1", order_state=OrderState.UNPAID)) == (Reason.FALLBACK, C, None)


def test_no_groups_reduces_to_the_strategy_over_all_eligible_agents(engine_cls):
    """§4: "When the shop has no groups at all, steps 5–6 reduce to "the strategy
    over all eligible agents"." (reason GROUP, no group id)."""
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B)
    preload(engine, A, 1)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.GROUP, B, None)


# ============================================================ section 4, step 7 (queue)


def _full_shop(engine_cls):
    """Only A (capacity 1) online; c1 goes to A, c2 and c3 queue."""
    engine = fresh(engine_cls)
    add_agent(engine, A, cap=1)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.GROUP, A, None)
    assert picked(dispatch(engine, "c2", "buyer-2", T0 + 1)) == (Reason.QUEUED, None, None)
    assert picked(dispatch(engine, "c3", "buyer-3", T0 + 2)) == (Reason.QUEUED, None, None)
    assert waiting(engine, "queue") == ["c2", "c3"]
    assert engine.drain_outbox() == []
    return engine


def test_everyone_full_queues(engine_cls):
    """§4.7: "Everyone is full. The conversation waits in the shop's queue (reason
    QUEUED)"; nobody's load changes for it."""
    engine = _full_shop(engine_cls)
    assert load(engine, A) == (1, 1, 1)
    assert engine.conversation(SHOP, "c2")["agent_id"] is None


def test_queue_drains_oldest_first_on_close(engine_cls):
    """§4.7: "handed out, oldest first, the moment an eligible agent has room (a
    close, ...)"; "The caller learns of that hand-out through the assignment watch
    stream" (the outbox: shop, conversation, buyer, agent, reason, at)."""
    engine = _full_shop(engine_cls)
    close(engine, "c1", T0 + MIN)
    assert engine.drain_outbox() == [(SHOP, "c2", "buyer-2", A, Reason.GROUP, T0 + MIN)]
    assert engine.drain_outbox() == []
    assert waiting(engine, "queue") == ["c3"]
    assert load(engine, A) == (1, 1, 2)
    assert engine.conversation(SHOP, "c2")["agent_id"] == A
    close(engine, "c2", T0 + 2 * MIN)
    assert engine.drain_outbox() == [(SHOP, "c3", "buyer-3", A, Reason.GROUP, T0 + 2 * MIN)]
    assert waiting(engine, "queue") == []


def test_queue_drains_on_transfer_away(engine_cls):
    """§4.7: "... a transfer away ..."."""
    engine = _full_shop(engine_cls)
    add_agent(engine, B, online=False)
    presence(engine, B, Presence.SUSPENDED)  # takes transfers, not new buyers
    assert transfer(engine, "c1", T0 + MIN, to_agent=B) == B
    assert engine.drain_outbox() == [(SHOP, "c2", "buyer-2", A, Reason.GROUP, T0 + MIN)]
    assert waiting(engine, "queue") == ["c3"]


def test_queue_drains_on_capacity_raise(engine_cls):
    """§4.7: "... a capacity raise ..."."""
    engine = _full_shop(engine_cls)
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=A, max_capacity=3))
    assert engine.drain_outbox() == [
        (SHOP, "c2", "buyer-2", A, Reason.GROUP, T0 + 2),
        (SHOP, "c3", "buyer-3", A, Reason.GROUP, T0 + 2),
    ]
    assert load(engine, A) == (3, 3, 3)


def test_queue_drains_when_an_agent_comes_online(engine_cls):
    """§4.7: "... an agent coming online"."""
    engine = _full_shop(engine_cls)
    add_agent(engine, B, cap=1, online=False)
    presence(engine, B, Presence.ONLINE, at=T0 + MIN)
    assert engine.drain_outbox() == [(SHOP, "c2", "buyer-2", B, Reason.GROUP, T0 + MIN)]
    assert waiting(engine, "queue") == ["c3"]


def test_queue_hand_out_never_exceeds_capacity(engine_cls):
    """§4.7 "has room": a single freed slot hands out exactly one conversation."""
    engine = _full_shop(engine_cls)
    reply(engine, "c1", A, at=T0 + MIN)  # a reply frees no room: A is still 1/1
    assert engine.drain_outbox() == []
    assert waiting(engine, "queue") == ["c2", "c3"]


def test_closing_a_queued_conversation_removes_it(engine_cls):
    """§8 closed: a conversation closed while it waits leaves the queue."""
    engine = _full_shop(engine_cls)
    close(engine, "c2", T0 + MIN)
    close(engine, "c1", T0 + 2 * MIN)
    assert engine.drain_outbox() == [(SHOP, "c3", "buyer-3", A, Reason.GROUP, T0 + 2 * MIN)]


# ============================================================ section 5 (strategies)


def _agents_with_load(engine_cls, caps_and_active, seed=0, **settings):
    engine = fresh(engine_cls, seed=seed, **settings)
    for name, (cap, active) in caps_and_active.items():
        add_agent(engine, name, cap=cap)
        preload(engine, name, active)
    return engine


def test_least_saturation_30_50_80_picks_the_30_percent_agent(engine_cls):
    """§5 LEAST_SATURATION: "30% / 50% / 80% → the 30% agent"."""
    for seed in range(5):
        engine = _agents_with_load(engine_cls, {A: (10, 5), B: (10, 8), C: (10, 3)}, seed=seed)
        assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.GROUP, C, None)


def test_least_saturation_30_30_80_picks_either_30_percent_agent(engine_cls):
    """§5 LEAST_SATURATION: "30% / 30% / 80% → either 30% agent"; "ties random":
    over many seeds both are picked, the 80% agent never."""
    seen = set()
    for seed in SEEDS:
        engine = _agents_with_load(engine_cls, {A: (10, 3), B: (10, 8), C: (10, 3)}, seed=seed)
        reason, agent_id, _ = picked(dispatch(engine, "c1", "buyer-1"))
        assert reason == Reason.GROUP
        assert agent_id in {A, C}
        seen.add(agent_id)
    assert seen == {A, C}


def test_least_saturation_is_a_ratio_not_a_count(engine_cls):
    """§5: "lowest active / max capacity": 3/10 (30%) beats 1/2 (50%)."""
    engine = _agents_with_load(engine_cls, {A: (2, 1), B: (10, 3)})
    assert dispatch(engine, "c1", "buyer-1")[1] == B


def test_full_agent_receives_no_new_buyer(engine_cls):
    """§2: "An agent at saturation ≥ 1 is full and receives no new buyer through a
    strategy." """
    engine = _agents_with_load(engine_cls, {A: (2, 2), B: (10, 9)})
    assert dispatch(engine, "c1", "buyer-1")[1] == B
    assert picked(dispatch(engine, "c2", "buyer-2")) == (Reason.QUEUED, None, None)


@pytest.mark.parametrize(
    "strategy",
    [
        Strategy.LEAST_SATURATION,
        Strategy.FEWEST_TODAY,
        Strategy.CAPACITY_ROUND_ROBIN,
        Strategy.FEWEST_UNREAD,
        Strategy.WEIGHTED_BUSYNESS,
    ],
)
def test_every_strategy_skips_offline_suspended_full_and_no_permission(engine_cls, strategy):
    """§5: "All strategies skip agents that are offline, suspended, full, or without
    chat permission." """
    engine = fresh(engine_cls, seed=3, strategy=strategy)
    add_agent(engine, "tb1:off", online=False, created_at_ms=1)
    add_agent(engine, "tb1:susp", created_at_ms=1)
    presence(engine, "tb1:susp", Presence.SUSPENDED)
    add_agent(engine, "tb1:full", cap=1, created_at_ms=1, weight=9)
    add_agent(engine, "tb1:noperm", chat_permission=False, created_at_ms=1, weight=9)
    add_agent(engine, A, cap=50, created_at_ms=5)
    preload(engine, "tb1:full", 1)
    for i in range(12):
        assert picked(dispatch(engine, f"c{i}", f"buyer-{i}")) == (Reason.GROUP, A, None)


def test_fewest_today_counts_closed_conversations(engine_cls):
    """§5 FEWEST_TODAY: "fewest conversations received today (closed + active, since
    00:00 shop time)": A received 2 (both closed), B holds 1 active -> B."""
    engine = fresh(engine_cls, strategy=Strategy.FEWEST_TODAY)
    add_agent(engine, A)
    add_agent(engine, B)
    for conv in preload(engine, A, 2):
        close(engine, conv)
    preload(engine, B, 1)
    assert load(engine, A) == (0, 0, 2)
    assert dispatch(engine, "c1", "buyer-1")[1] == B


def test_fewest_today_ties_are_random(engine_cls):
    """§5 FEWEST_TODAY: "ties random"."""
    seen = set()
    for seed in SEEDS:
        engine = fresh(engine_cls, seed=seed, strategy=Strategy.FEWEST_TODAY)
        add_agent(engine, A)
        add_agent(engine, B)
        seen.add(dispatch(engine, "c1", "buyer-1")[1])
    assert seen == {A, B}


def test_fewest_today_freshly_online_agent_takes_a_burst(engine_cls):
    """§5 FEWEST_TODAY: "A freshly online agent may take a burst: expected"."""
    engine = fresh(engine_cls, strategy=Strategy.FEWEST_TODAY)
    add_agent(engine, A)
    for conv in preload(engine, A, 3):
        close(engine, conv)
    add_agent(engine, B, at=T0 + MIN)
    got = [dispatch(engine, f"c{i}", f"buyer-{i}", T0 + MIN)[1] for i in range(3)]
    assert got == [B, B, B]


def test_fewest_today_resets_at_midnight_in_the_shop_time_zone(engine_cls):
    """§2: "today = conversations received since 00:00 in the shop's time zone
    (closed ones included, reset daily)", driven by the event times.

    Asia/Shanghai is UTC+8: local midnight of 2024-03-01 is 2024-02-29 16:00 UTC.
    B receives 3 at 23:30 local (Feb 29), A receives 1 at 23:59:59.999 and 1 at
    00:30 local (Mar 1). At 00:45 local: A today 1, B today 0 -> B. (Counting by
    UTC day, or never resetting, gives A 2 < B 3 -> A.)
    """
    tz = ZoneInfo("Asia/Shanghai")
    midnight = int(dt.datetime(2024, 3, 1, tzinfo=tz).timestamp() * 1000)
    assert midnight == int(dt.datetime(2024, 2, 29, 16, tzinfo=dt.UTC).timestamp() * 1000)
    engine = fresh(engine_cls, strategy=Strategy.FEWEST_TODAY, timezone="Asia/Shanghai")
    add_agent(engine, A, at=midnight - HOUR)
    add_agent(engine, B, at=midnight - HOUR)
    for conv in preload(engine, B, 3, at=midnight - 30 * MIN):
        close(engine, conv, at=midnight - 30 * MIN)
    assert load(engine, B) == (0, 0, 3)
    # The last instant of the day still counts the day's conversations.
    assert dispatch(engine, "late", "buyer-late", midnight - 1)[1] == A  # 0 < 3
    assert load(engine, A)[2] == 1 and load(engine, B)[2] == 3
    close(engine, "late", at=midnight - 1)
    # Midnight: everyone starts the new day at 0.
    assert engine.conversation(SHOP, "late") is None
    preload(engine, A, 1, prefix="new", at=midnight + 30 * MIN)
    assert load(engine, A) == (1, 1, 1)
    assert load(engine, B) == (0, 0, 0)
    assert picked(dispatch(engine, "c1", "buyer-1", midnight + 45 * MIN)) == (Reason.GROUP, B, None)


def test_fewest_today_resets_daily_at_utc_midnight_for_a_utc_shop(engine_cls):
    """§2 "reset daily": the same events in a UTC shop fall into one day (15:30 and
    16:30 UTC), so A (1) beats B (2)."""
    tz = ZoneInfo("Asia/Shanghai")
    midnight = int(dt.datetime(2024, 3, 1, tzinfo=tz).timestamp() * 1000)
    engine = fresh(engine_cls, strategy=Strategy.FEWEST_TODAY, timezone="UTC")
    add_agent(engine, A, at=midnight - HOUR)
    add_agent(engine, B, at=midnight - HOUR)
    for conv in preload(engine, B, 2, at=midnight - 30 * MIN):
        close(engine, conv, at=midnight - 30 * MIN)
    preload(engine, A, 1, prefix="new", at=midnight + 30 * MIN)
    assert load(engine, B) == (0, 0, 2)
    assert picked(dispatch(engine, "c1", "buyer-1", midnight + 45 * MIN)) == (Reason.GROUP, A, None)
    # ... and the UTC day rolls over 8 hours later.
    utc_midnight = int(dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)
    engine.set_presence(SHOP, A, Presence.ONLINE, Client.DESKTOP, utc_midnight)
    assert load(engine, A)[2] == 0 and load(engine, B)[2] == 0


def test_capacity_round_robin_30_20_10_gives_a_b_c_a_b_a(engine_cls):
    """§5 CAPACITY_ROUND_ROBIN: "capacities 30 / 20 / 10 give the cycle A B C A B A
    (ratio reduced by the gcd, then passes: every agent with credit left, in
    capacity order)" — "larger capacity first", whatever the registration order;
    the cycle then repeats."""
    engine = fresh(engine_cls, strategy=Strategy.CAPACITY_ROUND_ROBIN)
    add_agent(engine, C, cap=10)
    add_agent(engine, B, cap=20)
    add_agent(engine, A, cap=30)
    got = [dispatch(engine, f"c{i}", f"buyer-{i}")[1] for i in range(12)]
    assert got == [A, B, C, A, B, A] * 2


def test_capacity_round_robin_equal_capacities_alternate(engine_cls):
    """§5 CAPACITY_ROUND_ROBIN: "equal capacities alternate"."""
    engine = fresh(engine_cls, strategy=Strategy.CAPACITY_ROUND_ROBIN)
    add_agent(engine, A, cap=5)
    add_agent(engine, B, cap=5)
    got = [dispatch(engine, f"c{i}", f"buyer-{i}")[1] for i in range(6)]
    assert got == [A, B, A, B, A, B]


def test_capacity_round_robin_full_agents_sit_out(engine_cls):
    """§5 CAPACITY_ROUND_ROBIN: "full agents sit out"."""
    engine = fresh(engine_cls, strategy=Strategy.CAPACITY_ROUND_ROBIN)
    add_agent(engine, A, cap=4)
    add_agent(engine, B, cap=4)
    add_agent(engine, C, cap=4)
    preload(engine, B, 4)  # B full
    got = [dispatch(engine, f"c{i}", f"buyer-{i}")[1] for i in range(4)]
    assert got == [A, C, A, C]


def test_fewest_unread_tie_goes_to_the_earliest_created_account(engine_cls):
    """§5 FEWEST_UNREAD: "fewest unread conversations; ties go to the agent whose
    account was created earliest" (not the first registered)."""
    engine = fresh(engine_cls, strategy=Strategy.FEWEST_UNREAD)
    add_agent(engine, B, created_at_ms=2_000)
    add_agent(engine, A, created_at_ms=1_000)
    got = [dispatch(engine, f"c{i}", f"buyer-{i}")[1] for i in range(4)]
    # 0/0 tie -> A; then B has fewer; 1/1 tie -> A; then B.
    assert got == [A, B, A, B]


def test_fewest_unread_counts_unread_not_active(engine_cls):
    """§5 FEWEST_UNREAD: unread, not active: A (5 active, 0 unread) beats B (1, 1)."""
    engine = fresh(engine_cls, strategy=Strategy.FEWEST_UNREAD)
    add_agent(engine, A, created_at_ms=5)
    add_agent(engine, B, created_at_ms=1)
    for conv in preload(engine, A, 5):
        reply(engine, conv, A)
    preload(engine, B, 1)
    assert dispatch(engine, "c1", "buyer-1")[1] == A


def test_weighted_busyness_shares_load_in_proportion_to_weight(engine_cls):
    """§5 WEIGHTED_BUSYNESS: "load is shared in proportion to weight (pick the
    lowest active / weight; ties: higher weight, then random)"; "Higher weight →
    more buyers". Weights 2 and 1: A B A A B A ... and 20 : 10 after 30."""
    engine = fresh(engine_cls, strategy=Strategy.WEIGHTED_BUSYNESS, busy_threshold=1000)
    add_agent(engine, B, cap=100, weight=1)
    add_agent(engine, A, cap=100, weight=2)
    got = [dispatch(engine, f"c{i}", f"buyer-{i}")[1] for i in range(30)]
    assert got[:6] == [A, B, A, A, B, A]
    assert (got.count(A), got.count(B)) == (20, 10)


def test_weighted_busyness_not_busy_agents_come_first(engine_cls):
    """§5 WEIGHTED_BUSYNESS: "agents that are not busy (unread ≤ threshold) come
    first"; §2 "Busy: unread > busy threshold (default 4)"; "quicker repliers →
    more buyers".
    A: weight 1, 8 active, 4 unread (not busy: exactly the threshold).
    B: weight 2, 5 active, 5 unread (busy).
    By active/weight (8 vs 2.5) or by unread/weight (4 vs 2.5) B would win; A is
    the only agent that is not busy, so A gets it."""
    engine = fresh(engine_cls, strategy=Strategy.WEIGHTED_BUSYNESS)
    add_agent(engine, A, cap=30, weight=1)
    add_agent(engine, B, cap=30, weight=2)
    for conv in preload(engine, A, 8)[:4]:
        reply(engine, conv, A)
    preload(engine, B, 5)
    assert load(engine, A)[:2] == (8, 4) and load(engine, B)[:2] == (5, 5)
    assert dispatch(engine, "c1", "buyer-1")[1] == A


def test_weighted_busyness_all_busy_lowest_unread_per_weight(engine_cls):
    """§5 WEIGHTED_BUSYNESS: "if all are busy, the lowest unread / weight".
    A: weight 1, 5 active, 5 unread (5/1). B: weight 3, 18 active, 6 unread (6/3=2).
    By active/weight A would win (5 < 6); by unread/weight B wins."""
    engine = fresh(engine_cls, strategy=Strategy.WEIGHTED_BUSYNESS)
    add_agent(engine, A, cap=30, weight=1)
    add_agent(engine, B, cap=30, weight=3)
    preload(engine, A, 5)
    for conv in preload(engine, B, 18)[:12]:
        reply(engine, conv, B)
    assert load(engine, B)[:2] == (18, 6)
    assert dispatch(engine, "c1", "buyer-1")[1] == B


def test_weighted_busyness_equal_weight_ties_are_random(engine_cls):
    """§5 WEIGHTED_BUSYNESS: "ties: higher weight, then random"."""
    seen = set()
    for seed in SEEDS:
        engine = fresh(engine_cls, seed=seed, strategy=Strategy.WEIGHTED_BUSYNESS)
        add_agent(engine, A)
        add_agent(engine, B)
        seen.add(dispatch(engine, "c1", "buyer-1")[1])
    assert seen == {A, B}


# ============================================================ section 6 (offline rules)


def test_offline_main_account_rule(engine_cls):
    """§6 MAIN_ACCOUNT: "the main account gets it (as a leave-message), online or
    not"."""
    engine = fresh(engine_cls, offline_rule=OfflineRule.MAIN_ACCOUNT)
    add_agent(engine, A, online=False)
    assert agent_state(engine, MAIN)["presence"] == Presence.OFFLINE
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.OFFLINE_MAIN_ACCOUNT, MAIN, None)
    assert load(engine, MAIN) == (1, 1, 1)


def test_offline_proxy_account_rule(engine_cls):
    """§6 PROXY_ACCOUNT: "the configured proxy account gets it"."""
    engine = fresh(engine_cls)
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=PROXY, role=Role.PROXY, max_capacity=50))
    make_shop(engine, offline_rule=OfflineRule.PROXY_ACCOUNT, proxy_account=PROXY)
    add_agent(engine, A, online=False)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.OFFLINE_PROXY_ACCOUNT, PROXY, None)
    assert load(engine, PROXY) == (1, 1, 1)
    assert load(engine, MAIN) == (0, 0, 0)


def test_offline_message_pool_waits_until_claimed(engine_cls):
    """§6 MESSAGE_POOL: "it waits in the shop's leave-message pool until an agent
    claims it explicitly (ClaimFromPool) or an administrator assigns it" — an
    agent coming online does not receive it by itself."""
    engine = fresh(engine_cls, offline_rule=OfflineRule.MESSAGE_POOL)
    add_agent(engine, A, online=False)
    for i in (1, 2, 3):
        assert picked(dispatch(engine, f"c{i}", f"buyer-{i}", T0 + i)) == (Reason.OFFLINE_MESSAGE_POOL, None, None)
    assert waiting(engine, "pool") == ["c1", "c2", "c3"]
    presence(engine, A, Presence.ONLINE, at=T0 + MIN)
    assert waiting(engine, "pool") == ["c1", "c2", "c3"]
    assert load(engine, A) == (0, 0, 0)
    assert engine.drain_outbox() == []


def test_claim_from_pool_takes_the_oldest_or_the_named_one(engine_cls):
    """§6 MESSAGE_POOL: ClaimFromPool — without a name the oldest waiting one; with
    a name that one. The claim is a hand-out (§8: active +1, today +1, unread +1)."""
    engine = fresh(engine_cls, offline_rule=OfflineRule.MESSAGE_POOL)
    add_agent(engine, A, online=False)
    for i in (1, 2, 3):
        dispatch(engine, f"c{i}", f"buyer-{i}", T0 + i)
    presence(engine, A, Presence.ONLINE, at=T0 + MIN)
    assert engine.claim_from_pool(SHOP, A, T0 + 2 * MIN) == ("c1", "buyer-1")
    assert engine.claim_from_pool(SHOP, A, T0 + 3 * MIN, "c3") == ("c3", "buyer-3")
    assert waiting(engine, "pool") == ["c2"]
    assert load(engine, A) == (2, 2, 2)
    assert engine.conversation(SHOP, "c3")["agent_id"] == A
    assert engine.drain_outbox() == [
        (SHOP, "c1", "buyer-1", A, Reason.OFFLINE_MESSAGE_POOL, T0 + 2 * MIN),
        (SHOP, "c3", "buyer-3", A, Reason.OFFLINE_MESSAGE_POOL, T0 + 3 * MIN),
    ]


def _staging_shop(engine_cls, n, cap=3, agents=((A, 10), (B, 10), (C, 10))):
    engine = fresh(engine_cls, offline_rule=OfflineRule.STAGING, staging_first_cap=cap)
    for agent_id, max_cap in agents:
        add_agent(engine, agent_id, cap=max_cap, online=False)
    for i in range(1, n + 1):
        assert picked(dispatch(engine, f"c{i}", f"buyer-{i}", T0 + i)) == (Reason.OFFLINE_STAGING, None, None)
    assert waiting(engine, "staging") == [f"c{i}" for i in range(1, n + 1)]
    return engine


def staged(conv_numbers, agent_id, at):
    return [(SHOP, f"c{i}", f"buyer-{i}", agent_id, Reason.OFFLINE_STAGING, at) for i in conv_numbers]


def test_staging_first_agent_online_gets_up_to_the_cap_next_agent_the_rest(engine_cls):
    """§6 STAGING: "When agents come online, waiting conversations are pushed, oldest
    first: the first agent to come online receives up to 100 (the cap is a
    setting), the rest go to the agents who come online after, each up to the
    cap"."""
    engine = _staging_shop(engine_cls, 8, cap=3)
    presence(engine, A, Presence.ONLINE, at=T0 + MIN)
    assert engine.drain_outbox() == staged([1, 2, 3], A, T0 + MIN)
    assert waiting(engine, "staging") == ["c4", "c5", "c6", "c7", "c8"]
    assert load(engine, A) == (3, 3, 3)
    presence(engine, B, Presence.ONLINE, at=T0 + 2 * MIN)
    assert engine.drain_outbox() == staged([4, 5, 6], B, T0 + 2 * MIN)
    presence(engine, C, Presence.ONLINE, at=T0 + 3 * MIN)
    assert engine.drain_outbox() == staged([7, 8], C, T0 + 3 * MIN)
    assert waiting(engine, "staging") == []
    assert load(engine, C) == (2, 2, 2)


def test_staging_default_cap_is_100(engine_cls):
    """§6 STAGING: "the first agent to come online receives up to 100"."""
    engine = fresh(engine_cls, offline_rule=OfflineRule.STAGING)
    add_agent(engine, A, cap=500, online=False)
    add_agent(engine, B, cap=500, online=False)
    for i in range(1, 106):
        dispatch(engine, f"c{i}", f"buyer-{i}", T0 + i)
    presence(engine, A, Presence.ONLINE, at=T0 + MIN)
    assert engine.drain_outbox() == staged(range(1, 101), A, T0 + MIN)
    presence(engine, B, Presence.ONLINE, at=T0 + 2 * MIN)
    assert engine.drain_outbox() == staged(range(101, 106), B, T0 + 2 * MIN)


def test_staging_drips_to_the_only_agent_as_its_unread_falls(engine_cls):
    """§6 STAGING: "while one agent is the only one online, the remainder drips to it
    as it works through its share: whenever its unread count falls below the cap,
    staged conversations are pushed until it is back at the cap"."""
    engine = _staging_shop(engine_cls, 6, cap=3)
    presence(engine, A, Presence.ONLINE, at=T0 + MIN)
    assert engine.drain_outbox() == staged([1, 2, 3], A, T0 + MIN)
    reply(engine, "c1", A, at=T0 + 2 * MIN)  # unread 3 -> 2 -> pushed back to 3
    assert engine.drain_outbox() == staged([4], A, T0 + 2 * MIN)
    assert load(engine, A) == (4, 3, 4)
    close(engine, "c2", at=T0 + 3 * MIN)  # c2 unanswered: unread 3 -> 2
    assert engine.drain_outbox() == staged([5], A, T0 + 3 * MIN)
    assert load(engine, A) == (4, 3, 5)
    close(engine, "c1", at=T0 + 4 * MIN)  # c1 was answered: unread stays 3, no push
    assert engine.drain_outbox() == []
    assert waiting(engine, "staging") == ["c6"]


def test_staging_never_takes_an_agent_past_its_max_capacity(engine_cls):
    """§6 STAGING: "No hand-out ever takes an agent past its max capacity." """
    engine = _staging_shop(engine_cls, 4, cap=3, agents=((A, 2), (B, 10)))
    presence(engine, A, Presence.ONLINE, at=T0 + MIN)
    assert engine.drain_outbox() == staged([1, 2], A, T0 + MIN)
    reply(engine, "c1", A, at=T0 + 2 * MIN)  # unread 1 < 3, but 2/2 active
    assert engine.drain_outbox() == []
    assert load(engine, A) == (2, 1, 2)
    close(engine, "c1", at=T0 + 3 * MIN)  # room for one
    assert engine.drain_outbox() == staged([3], A, T0 + 3 * MIN)
    assert load(engine, A) == (2, 2, 3)
    assert waiting(engine, "staging") == ["c4"]


def test_staging_does_not_push_to_a_suspended_agent(engine_cls):
    """§2: SUSPENDED takes "no new buyers": staging pushes wait for ONLINE."""
    engine = _staging_shop(engine_cls, 2, cap=3)
    presence(engine, A, Presence.SUSPENDED, at=T0 + MIN)
    assert engine.drain_outbox() == []
    presence(engine, A, Presence.ONLINE, at=T0 + 2 * MIN)
    assert engine.drain_outbox() == staged([1, 2], A, T0 + 2 * MIN)


# ============================================================ section 7 (main account)


def _main_shop(engine_cls, mode, with_group=True, main_in_group=False):
    engine = fresh(engine_cls, main_account_mode=mode, offline_rule=OfflineRule.MESSAGE_POOL)
    add_agent(engine, MAIN, cap=10, role=Role.MAIN)
    add_agent(engine, A, cap=1)
    if with_group:
        add_group(engine, "g", [MAIN, A] if main_in_group else [A])
    return engine


def test_main_case_a_only_main_account_receives(engine_cls):
    """§7 case A (chat groups off): "only the main account receives conversations"."""
    engine = _main_shop(engine_cls, MainAccountMode.ONLY_MAIN, with_group=False)
    for i in range(5):
        assert dispatch(engine, f"c{i}", f"buyer-{i}")[1] == MAIN
    assert load(engine, A) == (0, 0, 0)
    assert load(engine, MAIN)[0] == 5


def test_main_case_b_main_account_receives_nothing_unless_forwarded(engine_cls):
    """§7 case B: "the main account receives nothing unless forwarded to it"."""
    engine = _main_shop(engine_cls, MainAccountMode.EXCLUDED)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.GROUP, A, "g")
    # A is full; the main account is online with room, yet receives nothing.
    assert picked(dispatch(engine, "c2", "buyer-2")) == (Reason.QUEUED, None, None)
    assert load(engine, MAIN) == (0, 0, 0)
    # ... unless forwarded to it.
    assert transfer(engine, "c1", T0 + MIN, to_agent=MAIN) == MAIN
    assert load(engine, MAIN) == (1, 1, 1)
    # c1's transfer freed A, so c2 leaves the queue for A — not for the main account.
    assert engine.drain_outbox() == [(SHOP, "c2", "buyer-2", A, Reason.GROUP, T0 + MIN)]


def test_main_case_c_main_account_only_when_everyone_else_is_offline(engine_cls):
    """§7 case C: "the main account receives only when every other agent is offline
    and it is online"."""
    engine = _main_shop(engine_cls, MainAccountMode.FALLBACK)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.GROUP, A, "g")
    # A online but full: not "every other agent is offline" -> the main account waits.
    assert picked(dispatch(engine, "c2", "buyer-2")) == (Reason.QUEUED, None, None)
    assert load(engine, MAIN) == (0, 0, 0)
    close(engine, "c2", T0 + MIN)
    presence(engine, A, Presence.OFFLINE, at=T0 + MIN)
    assert picked(dispatch(engine, "c3", "buyer-3", T0 + 2 * MIN)) == (Reason.FALLBACK, MAIN, None)
    # ... "and it is online": with the main account offline too, the offline rule applies.
    presence(engine, MAIN, Presence.OFFLINE, at=T0 + 3 * MIN)
    assert picked(dispatch(engine, "c4", "buyer-4", T0 + 3 * MIN)) == (Reason.OFFLINE_MESSAGE_POOL, None, None)


def test_main_case_c_main_account_not_used_while_another_agent_has_room(engine_cls):
    """§7 case C: with another agent online and free, the main account gets nothing."""
    engine = _main_shop(engine_cls, MainAccountMode.FALLBACK)
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=A, max_capacity=10))
    for i in range(5):
        assert picked(dispatch(engine, f"c{i}", f"buyer-{i}")) == (Reason.GROUP, A, "g")
    assert load(engine, MAIN) == (0, 0, 0)


def test_main_case_d_main_account_is_an_ordinary_agent(engine_cls):
    """§7 case D: "the main account is an ordinary agent" (a group member like the
    others): A is busier, so LEAST_SATURATION picks the main account."""
    engine = _main_shop(engine_cls, MainAccountMode.MEMBER, main_in_group=True)
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=A, max_capacity=10))
    preload(engine, A, 2)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.GROUP, MAIN, "g")


# ============================================================ presence and permission


def test_mobile_client_does_not_count_without_mobile_dispatch(engine_cls):
    """§2: "Only a desktop workbench login counts as online, unless the shop enables
    mobile dispatch." """
    engine = fresh(engine_cls, offline_rule=OfflineRule.MESSAGE_POOL)
    add_agent(engine, A, client=Client.MOBILE)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.OFFLINE_MESSAGE_POOL, None, None)
    add_agent(engine, B)
    preload(engine, B, 5)
    for i in range(3):
        assert dispatch(engine, f"n{i}", f"new-{i}")[1] == B


def test_mobile_client_counts_with_mobile_dispatch(engine_cls):
    """§2: "... unless the shop enables mobile dispatch"."""
    engine = fresh(engine_cls, offline_rule=OfflineRule.MESSAGE_POOL, mobile_dispatch=True)
    add_agent(engine, A, client=Client.MOBILE)
    assert picked(dispatch(engine, "c1", "buyer-1")) == (Reason.GROUP, A, None)


def test_agent_without_chat_permission_never_receives(engine_cls):
    """§2/§5: an agent is "a sub-account with chat permission"; strategies skip
    agents "without chat permission" — not even its recent contacts."""
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B)
    assign(engine, "c0", "buyer-0", A)
    reply(engine, "c0", A)
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=A, max_capacity=10, chat_permission=False))
    preload(engine, B, 5)
    for i in range(5):
        assert dispatch(engine, f"c{i + 1}", f"buyer-{i}", T0 + MIN)[1] == B
    assert load(engine, A)[2] == 1


# ============================================================ section 8 (state changes)


def test_load_counters_through_a_conversation_life(engine_cls):
    """§8: "assigned ...: active +1, today +1, and unread +1"; "buyer message
    (unread +1 if the conversation had been answered)"; "agent reply (unread −1 ...)";
    "closed (active −1, and unread −1 if it was still unanswered)"; today keeps
    closed ones (§2)."""
    engine = fresh(engine_cls)
    add_agent(engine, A)
    dispatch(engine, "c1", "buyer-1")
    assert load(engine, A) == (1, 1, 1)
    buyer_message(engine, "c1")  # still unanswered: no change
    assert load(engine, A) == (1, 1, 1)
    reply(engine, "c1", A)
    assert load(engine, A) == (1, 0, 1)
    reply(engine, "c1", A)  # a second reply does not go below zero
    assert load(engine, A) == (1, 0, 1)
    buyer_message(engine, "c1")
    assert load(engine, A) == (1, 1, 1)
    buyer_message(engine, "c1")
    assert load(engine, A) == (1, 1, 1)
    reply(engine, "c1", A)
    close(engine, "c1")  # answered: unread unchanged
    assert load(engine, A) == (0, 0, 1)
    dispatch(engine, "c2", "buyer-2")
    assert load(engine, A) == (1, 1, 2)
    close(engine, "c2")  # unanswered: unread -1
    assert load(engine, A) == (0, 0, 2)


def test_transfer_to_an_agent_moves_the_load(engine_cls):
    """§8: "transferred/forwarded to another agent ... (load moves; the new agent
    becomes the recent contact; the conversation is marked forwarded)"."""
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B, online=False)
    dispatch(engine, "c1", "buyer-1")  # only A is online
    dispatch(engine, "c2", "buyer-2")
    reply(engine, "c2", A)
    assert transfer(engine, "c1", T0 + MIN, to_agent=B) == B  # unanswered
    assert load(engine, A) == (1, 0, 2)
    assert load(engine, B) == (1, 1, 1)
    assert transfer(engine, "c2", T0 + MIN, to_agent=B) == B  # answered
    assert load(engine, A) == (0, 0, 2)
    assert load(engine, B) == (2, 1, 2)
    conv = engine.conversation(SHOP, "c1")
    assert conv["agent_id"] == B and conv["forwarded"] is True
    assert engine.conversation(SHOP, "c2")["forwarded"] is True
    assert engine.recent_contact(SHOP, "buyer-1")[0] == B
    assert engine.recent_contact(SHOP, "buyer-2")[0] == B


def test_transfer_to_a_group_picks_a_member_by_the_group_strategy(engine_cls):
    """§8: "transferred/forwarded to another agent or group (load moves ...)"."""
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B, created_at_ms=1)
    add_agent(engine, C, created_at_ms=2)
    add_group(engine, "pre", [A])
    add_group(engine, "after", [B, C], strategy=Strategy.FEWEST_UNREAD)
    assign(engine, "c1", "buyer-1", A)
    preload(engine, B, 1)
    assert transfer(engine, "c1", T0 + MIN, to_group="after") == C  # C: 0 unread < B's 1
    assert load(engine, A) == (0, 0, 1)
    assert load(engine, C) == (1, 1, 1)
    assert engine.conversation(SHOP, "c1")["forwarded"] is True
    assert engine.recent_contact(SHOP, "buyer-1")[0] == C


def test_new_group_member_receives_only_what_is_routed_after_it_joined(engine_cls):
    """§8: "A newly added group member starts with no history: it receives what is
    routed after it joined (and what is still waiting), never old conversations." """
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B, online=False)
    add_group(engine, "g", [A])
    for i in range(3):
        assert picked(dispatch(engine, f"c{i}", f"buyer-{i}")) == (Reason.GROUP, A, "g")
    add_group(engine, "g", [A, B])
    presence(engine, B, Presence.ONLINE, at=T0 + MIN)
    assert load(engine, B) == (0, 0, 0)
    assert load(engine, A) == (3, 3, 3)
    assert engine.drain_outbox() == []
    assert [engine.conversation(SHOP, f"c{i}")["agent_id"] for i in range(3)] == [A, A, A]
    assert picked(dispatch(engine, "n1", "new-1", T0 + MIN)) == (Reason.GROUP, B, "g")


def test_new_group_member_receives_what_is_still_waiting(engine_cls):
    """§8: "... (and what is still waiting)": a queued conversation of a group-bound
    buyer goes to the member added to that group."""
    engine = fresh(engine_cls)
    add_agent(engine, A, cap=1)
    add_agent(engine, B, online=False)
    add_group(engine, "g", [A])
    dispatch(engine, "c1", "buyer-1")
    assert picked(dispatch(engine, "c2", "buyer-2")) == (Reason.QUEUED, None, None)
    # B is present but suspended (takes no new buyer) when it joins, then goes
    # online: the waiting c2 goes to it as a member of "g" (reason GROUP).
    presence(engine, B, Presence.SUSPENDED, at=T0 + MIN)
    add_group(engine, "g", [A, B])
    assert engine.drain_outbox() == []
    presence(engine, B, Presence.ONLINE, at=T0 + 2 * MIN)
    assert engine.drain_outbox() == [(SHOP, "c2", "buyer-2", B, Reason.GROUP, T0 + 2 * MIN)]


def test_shop_clock_never_goes_back(engine_cls):
    """§8 Time: events carry the IM server's time; a late (older) event does not
    rewind the affinity window (documented choice of both engines)."""
    engine = _contact_setup(engine_cls)
    preload(engine, A, 2)  # A 3/10, B 0/10
    dispatch(engine, "c2", "buyer-2", T0 + 73 * HOUR)  # B; the shop is now past the window
    assert picked(dispatch(engine, "c3", "buyer-1", T0 + HOUR)) == (Reason.GROUP, B, None)


# ============================================================ section 9


def test_trace_names_the_steps(engine_cls):
    """§9: "Every answer carries the reason, and on request a short decision trace
    (which steps were tried and why they passed)"."""
    engine = fresh(engine_cls)
    add_agent(engine, A)
    reason, agent_id, group_id, trace = dispatch(engine, "c1", "buyer-1", trace=True)
    assert (reason, agent_id, group_id) == (Reason.GROUP, A, None)
    assert isinstance(trace, list) and all(isinstance(line, str) for line in trace)
    steps = [line.split(":")[0] for line in trace]
    assert steps == ["online", "affinity", "exclusive", "robot_first", "groups", "strategy"]
    assert A in trace[-1]
    assert dispatch(engine, "c2", "buyer-2")[3] is None  # only on request


def test_trace_stops_at_the_step_that_wins(engine_cls):
    """§9 trace; §4 "the first one that yields an agent wins"."""
    engine = _contact_setup(engine_cls)
    trace = dispatch(engine, "c2", "buyer-1", T0 + MIN, trace=True)[3]
    assert [line.split(":")[0] for line in trace] == ["online", "affinity"]
    assert A in trace[-1]
    engine = fresh(engine_cls, offline_rule=OfflineRule.MESSAGE_POOL)
    trace = dispatch(engine, "c1", "buyer-1", trace=True)[3]
    assert [line.split(":")[0] for line in trace] == ["online", "offline"]
    assert "MESSAGE_POOL" in trace[-1]


def _scripted_run(engine_cls, seed):
    engine = engine_cls(seed=seed)
    make_shop(engine, offline_grace_ms=10 * MIN)
    for name in (A, B, C):
        add_agent(engine, name, cap=3)
    add_group(engine, "pre", [A, B], order_states=(OrderState.UNPAID,))
    add_group(engine, "after", [B, C], order_states=(OrderState.AFTER_SALE,))
    answers = []
    for i in range(40):
        at = T0 + i * MIN
        state = (OrderState.UNPAID, OrderState.AFTER_SALE, OrderState.SHIPPED)[i % 3]
        answers.append(picked(dispatch(engine, f"c{i}", f"buyer-{i % 7}", at, order_state=state)))
        if i % 4 == 1:
            conv = engine.conversation(SHOP, f"c{i - 1}")
            if conv is not None and conv["agent_id"] is not None:
                reply(engine, f"c{i - 1}", at=at)
        if i % 5 == 4:
            close(engine, f"c{i - 3}", at=at)
    answers.append(engine.drain_outbox())
    return answers, engine.shop_state(SHOP)


def test_same_seed_and_events_give_the_same_answers(engine_cls):
    """§9: "The same request, with the same state and seed, always gives the same
    answer (replayable; the basis for journaling and replication)." """
    first = _scripted_run(engine_cls, 1234)
    second = _scripted_run(engine_cls, 1234)
    assert first == second
    # Both bound groups were used, and SHIPPED (unbound) conversations drew among them.
    groups = {g for (_r, _a, g) in first[0][:-1] if g is not None}
    assert groups == {"pre", "after"}


def test_tie_seed_makes_a_shop_reproducible_whatever_the_engine_seed(engine_cls):
    """§5: "Ties ... must be ... reproducible under a seed in tests": a shop's own
    tie_seed fixes its draws independently of the engine seed."""
    runs = []
    for engine_seed in (1, 2, 3):
        engine = engine_cls(seed=engine_seed)
        make_shop(engine, tie_seed=99)
        add_agent(engine, A)
        add_agent(engine, B)
        run = []
        for i in range(10):
            run.append(dispatch(engine, f"c{i}", f"buyer-{i}")[1])
            close(engine, f"c{i}")
        runs.append(run)
    assert runs[0] == runs[1] == runs[2]


# ----------------------------------------------------------------- §11 priority, position, estimated wait


def test_priority_hands_out_highest_first_then_oldest_first(engine_cls):
    """§11: waiting conversations go highest priority first, then oldest first."""
    e = engine_cls(1)
    make_shop(e)
    add_agent(e, A, cap=1)
    dispatch(e, "busy", "b0")
    for conv, priority in (("q1", 0), ("q2", 5), ("q3", 0), ("q4", 9), ("q5", 5)):
        assert picked(dispatch(e, conv, f"buyer-{conv}", priority=priority)) == (Reason.QUEUED, None, None)
    assert waiting(e, "queue") == ["q4", "q2", "q5", "q1", "q3"]
    queue = e.shop_state(SHOP)["queue"]
    assert [(w["priority"], w["position"]) for w in queue] == [(9, 1), (5, 2), (5, 3), (0, 4), (0, 5)]
    handed = []
    previous = "busy"
    for i in range(5):
        close(e, previous, T0 + (i + 1) * MIN)
        out = e.drain_outbox()
        assert len(out) == 1
        handed.append(out[0][1])
        previous = out[0][1]
    assert handed == ["q4", "q2", "q5", "q1", "q3"]


def test_priority_orders_staging_and_the_message_pool_too(engine_cls):
    """§11 for §6: staging pushes and pool claims take the highest priority first."""
    e = engine_cls(1)
    make_shop(e, offline_rule=OfflineRule.STAGING, staging_first_cap=1)
    add_agent(e, A, cap=5, online=False)
    for conv, priority in (("s1", 0), ("s2", 3), ("s3", 3)):
        assert picked(dispatch(e, conv, f"b-{conv}", priority=priority)) == (Reason.OFFLINE_STAGING, None, None)
    assert waiting(e, "staging") == ["s2", "s3", "s1"]
    presence(e, A, Presence.ONLINE, T0 + SEC)
    assert [item[1] for item in e.drain_outbox()] == ["s2"]  # the cap is 1
    p = engine_cls(1)
    make_shop(p, offline_rule=OfflineRule.MESSAGE_POOL)
    add_agent(p, A, online=False)
    for conv, priority in (("m1", 1), ("m2", 0), ("m3", 2)):
        assert picked(dispatch(p, conv, f"b-{conv}", priority=priority)) == (Reason.OFFLINE_MESSAGE_POOL, None, None)
    assert p.claim_from_pool(SHOP, A, T0 + SEC)[0] == "m3"
    assert p.claim_from_pool(SHOP, A, T0 + 2 * SEC)[0] == "m1"


def test_priority_out_of_range_is_refused_naming_the_field(engine_cls):
    e = engine_cls(1)
    make_shop(e)
    add_agent(e, A)
    for bad in (10, -1, 2**40):
        with pytest.raises(InvalidArgumentError, match="priority"):
            dispatch(e, "c", "b", priority=bad)
    with pytest.raises(InvalidArgumentError, match="priority must be an integer"):
        dispatch(e, "c", "b", priority="9")
    assert e.conversation(SHOP, "c") is None


def test_position_and_estimated_wait_values(engine_cls):
    """§11: position = 1 + the conversations handed out before it; the estimated wait is the
    position times the EWMA (weight 1/8) of the time between two hand-outs, unknown before two."""
    e = engine_cls(1)
    make_shop(e)
    add_agent(e, A, cap=1)
    dispatch(e, "busy", "b0")
    dispatch(e, "q1", "b1")
    dispatch(e, "q2", "b2", priority=1)
    dispatch(e, "q3", "b3")
    assert e.waiting_position(SHOP, "q2") == (1, None)  # no hand-out yet: no estimate
    assert e.waiting_position(SHOP, "q1") == (2, None)
    assert e.waiting_position(SHOP, "q3") == (3, None)
    assert e.waiting_position(SHOP, "busy") is None  # held, not waiting
    assert e.waiting_position(SHOP, "gone") is None
    close(e, "busy", T0 + 60 * SEC)  # hand-out 1 (q2): a first time, still no interval
    assert e.waiting_position(SHOP, "q1") == (1, None)
    close(e, "q2", T0 + 100 * SEC)  # hand-out 2 (q1): interval 40 s
    assert e.waiting_position(SHOP, "q3") == (1, 40 * SEC)
    dispatch(e, "q4", "b4", at=T0 + 100 * SEC)
    assert e.waiting_position(SHOP, "q4") == (2, 80 * SEC)
    close(e, "q1", T0 + 180 * SEC)  # hand-out 3 (q3): (7 * 40 s + 80 s) // 8 = 45 s
    assert e.waiting_position(SHOP, "q4") == (1, 45 * SEC)
    assert e.drain_outbox() and e.shop_state(SHOP)["queue"][0]["position"] == 1


def test_waiting_answers_carry_position_and_estimated_wait_on_the_wire(engine_cls):
    """The wire codec writes what the object path sets: position 7, estimated_wait 8."""
    from dispatcher._gen.dispatch.v1 import dispatch_pb2

    e = engine_cls(1)
    make_shop(e)
    add_agent(e, A, cap=1)
    dispatch(e, "busy", "b0")
    dispatch(e, "q1", "b1")
    dispatch(e, "q0", "b0")
    close(e, "busy", T0 + 10 * SEC)  # q1 goes out
    close(e, "q1", T0 + 15 * SEC)  # q0 goes out: two hand-outs, interval 5 s
    dispatch(e, "q2", "b2", at=T0 + 15 * SEC)
    raw = dispatch_pb2.DispatchRequest(shop_id=SHOP, buyer_id="b3", conversation_id="q3", priority=1)
    answer = dispatch_pb2.DispatchResponse.FromString(e.dispatch_wire(raw.SerializeToString(), T0 + 16 * SEC))
    assert (answer.reason, answer.position, answer.estimated_wait.ToMilliseconds()) == (Reason.QUEUED, 1, 5 * SEC)
    again = dispatch_pb2.DispatchBatchRequest(requests=[raw]).SerializeToString()
    (retry,) = dispatch_pb2.DispatchBatchResponse.FromString(
        e.dispatch_batch_wire(again, T0 + 17 * SEC, 8)[0]
    ).responses
    assert (retry.reason, retry.position, retry.estimated_wait.ToMilliseconds()) == (Reason.QUEUED, 1, 5 * SEC)
    served = dispatch_pb2.DispatchResponse.FromString(
        e.dispatch_wire(raw.SerializeToString().replace(b"q3", b"q9").replace(b"b3", b"b9"), T0 + 18 * SEC)
    )
    assert (served.position, served.estimated_wait.ToMilliseconds()) == (2, 10 * SEC)  # after q3, before q2


# ----------------------------------------------------------------- §12 retries are safe


def test_a_retry_answers_what_is_current_and_changes_nothing(engine_cls):
    """§12: the same conversation with the same buyer: its agent and reason, nothing changed."""
    e = engine_cls(1)
    make_shop(e)
    add_agent(e, A, cap=1)
    add_agent(e, B, cap=5)
    first = picked(dispatch(e, "c1", "b1"))
    before = (e.export_state(), e.decision_counts(), e.drain_outbox())
    for at in (T0, T0 + HOUR):  # even later: the shop's clock does not move
        reason, agent_id, group_id, trace = dispatch(e, "c1", "b1", at=at, trace=True, priority=9)
        assert (reason, agent_id, group_id) == first
        assert trace == [f"retry:{agent_id}"]
    assert (e.export_state(), e.decision_counts(), e.drain_outbox()) == before
    assert e.retry_count() == 2
    # After a transfer, "current" is the new agent (the reason it was first routed with stays).
    other = B if first[1] == A else A
    transfer(e, "c1", T0 + SEC, to_agent=other)
    assert picked(dispatch(e, "c1", "b1")) == (first[0], other, None)


def test_a_retry_of_a_waiting_conversation_answers_where_it_waits(engine_cls):
    e = engine_cls(1)
    make_shop(e, offline_rule=OfflineRule.MESSAGE_POOL)
    add_agent(e, A, online=False)
    dispatch(e, "p1", "b1")
    dispatch(e, "p2", "b2")
    before = e.export_state()
    assert dispatch(e, "p2", "b2", trace=True) == (Reason.OFFLINE_MESSAGE_POOL, None, None, ["retry:pool:2"])
    assert e.waiting_position(SHOP, "p2") == (2, None)
    assert e.export_state() == before
    e.claim_from_pool(SHOP, A, T0 + SEC)  # p1 goes to A
    assert picked(dispatch(e, "p1", "b1")) == (Reason.OFFLINE_MESSAGE_POOL, A, None)
    assert e.waiting_position(SHOP, "p2") == (1, None)


def test_another_buyer_on_an_open_conversation_is_already_exists(engine_cls):
    e = engine_cls(1)
    make_shop(e)
    add_agent(e, A)
    dispatch(e, "c1", "b1")
    before = (e.export_state(), e.decision_counts(), e.retry_count())
    with pytest.raises(AlreadyExistsError, match="c1"):
        dispatch(e, "c1", "b2")
    assert (e.export_state(), e.decision_counts(), e.retry_count()) == before
    close(e, "c1", T0 + SEC)
    assert picked(dispatch(e, "c1", "b2", at=T0 + 2 * SEC))[1] == A  # closed: the id is free again


def test_retries_of_each_event_do_what_the_readme_says(engine_cls):
    """README "Retries": CLOSED again is NOT_FOUND, BUYER_MESSAGE counts again only once
    answered, AGENT_REPLY again is harmless, presence is idempotent, a claim is not."""
    e = engine_cls(1)
    make_shop(e)
    add_agent(e, A)
    dispatch(e, "c1", "b1")
    reply(e, "c1", at=T0 + SEC)
    buyer_message(e, "c1", T0 + 2 * SEC)
    buyer_message(e, "c1", T0 + 3 * SEC)  # unread was already set: no change
    assert load(e, A)[1] == 1
    reply(e, "c1", at=T0 + 4 * SEC)
    state = e.export_state()
    reply(e, "c1", at=T0 + 4 * SEC)  # the same reply again: nothing changes
    assert e.export_state() == state
    presence(e, A, Presence.ONLINE, T0 + 4 * SEC)
    assert e.export_state() == state
    close(e, "c1", T0 + 5 * SEC)
    state = e.export_state()
    with pytest.raises(NotFoundError):
        close(e, "c1", T0 + 5 * SEC)
    assert e.export_state() == state
    with pytest.raises(AlreadyExistsError):  # ASSIGNED is not a dispatch: a repeat is refused
        assign(e, "pre", "bp", A)
        assign(e, "pre", "bp", A)
