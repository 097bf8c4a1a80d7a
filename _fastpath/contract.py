"""The one engine contract: what the server, the journal, the wire codec and the tests may call.

``EngineProtocol`` is satisfied by both ``CompiledEngine`` (``_core.pyi``) and
``ReferenceEngine``; mypy checks it (``tests/test_contract.py`` asserts it at run
time too). ``DispatchCall`` is the argument list of ``dispatch``, written once:
the servicers, the journal records and the wire codec build one and call
``engine.dispatch(*call)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .model import AgentConfig, DispatchError, GroupConfig, ShopConfig

__all__ = ["Assignment", "Decision", "DispatchCall", "EngineProtocol"]

Decision = tuple[int, str | None, str | None, list[str] | None]
"""(reason, agent_id, group_id, trace) of one ``dispatch``."""

Assignment = tuple[str, str, str, str, int, int] | tuple[str, str, str, str, int, int, str]
"""An outbox hand-out: (shop_id, conversation_id, buyer_id, agent_id, reason, at_ms), and for a
re-route or reclaim (§10, reasons REROUTED / RECLAIMED) a 7th item, the previous agent's id. A
queue timeout (QUEUE_TIMEOUT) has agent_id "": it moved to the message pool."""


class DispatchCall(NamedTuple):
    """The arguments of ``EngineProtocol.dispatch``, in order (``engine.dispatch(*call)``)."""

    shop_id: str
    buyer_id: str
    conversation_id: str
    at_ms: int
    conv_type: int = 1
    source: str = ""
    order_state: int = 0
    to_account: str = ""
    trace: bool = False
    priority: int = 0  # spec §11, 0..9; last, so older positional calls keep their meaning


@runtime_checkable
class EngineProtocol(Protocol):
    """A dispatch engine. Single-threaded; every method is synchronous."""

    @property
    def kind(self) -> str: ...
    @property
    def seed(self) -> int: ...

    foreign_shop: Callable[[str], DispatchError | None] | None

    def note_estimate(self, eta_ms: int) -> None: ...
    def estimate_counts(self) -> tuple[list[int], int]: ...

    """None, or shop_id -> the error for an unknown shop that another cluster node
    owns (dispatcher/cluster.py); NOT_FOUND otherwise. Not state."""

    # configuration (spec §8)
    def put_shop(self, config: ShopConfig) -> None: ...
    def delete_shop(self, shop_id: str) -> None: ...
    def put_agent(self, config: AgentConfig) -> None: ...
    def delete_agent(self, shop_id: str, agent_id: str) -> None: ...
    def put_group(self, config: GroupConfig) -> None: ...
    def delete_group(self, shop_id: str, group_id: str) -> None: ...
    def set_exclusive_agent(self, shop_id: str, buyer_id: str, agent_id: str) -> None: ...
    def delete_exclusive_agent(self, shop_id: str, buyer_id: str) -> None: ...

    # events (spec §8)
    def set_presence(self, shop_id: str, agent_id: str, presence: int, client: int, at_ms: int) -> None: ...
    def conversation_event(
        self,
        shop_id: str,
        conversation_id: str,
        event: int,
        at_ms: int,
        buyer_id: str = "",
        agent_id: str = "",
        to_agent_id: str = "",
        to_group_id: str = "",
    ) -> str | None: ...
    def claim_from_pool(
        self, shop_id: str, agent_id: str, at_ms: int, conversation_id: str = ""
    ) -> tuple[str, str]: ...

    # the decision (spec §4–§7)
    def dispatch(
        self,
        shop_id: str,
        buyer_id: str,
        conversation_id: str,
        at_ms: int,
        conv_type: int = 1,
        source: str = "",
        order_state: int = 0,
        to_account: str = "",
        trace: bool = False,
        priority: int = 0,
    ) -> Decision: ...
    def dispatch_batch_wire(
        self, data: bytes, now_ms: int, max_items: int, max_at_ms: int | None = None
    ) -> tuple[bytes, int] | None: ...
    def dispatch_wire(self, data: bytes, now_ms: int, max_at_ms: int | None = None) -> bytes | None: ...

    # every operation on one batch (issue 13: Operate / OperateStream)
    def operate_wire(
        self, data: bytes, now_ms: int, max_items: int, max_at_ms: int | None = None
    ) -> tuple[bytes, int, int] | None: ...
    def operation_counts(self) -> list[int]: ...

    # time (spec §10): deadlines fire when a shop's time passes them
    def tick(self, now_ms: int) -> int: ...
    def tick_shop(self, shop_id: str, at_ms: int) -> int: ...
    def pending_deadlines(self) -> int: ...

    # reading (spec §9)
    def drain_outbox(self) -> list[Assignment]: ...
    def has_shop(self, shop_id: str) -> bool: ...
    def shop_ids(self) -> list[str]: ...
    def shop_config(self, shop_id: str) -> ShopConfig: ...
    def shop_state(self, shop_id: str) -> dict[str, Any]: ...
    def conversation(self, shop_id: str, conversation_id: str) -> dict[str, Any] | None: ...
    def recent_contact(self, shop_id: str, buyer_id: str) -> tuple[str, int] | None: ...
    def exclusive_agent(self, shop_id: str, buyer_id: str) -> str | None: ...
    def totals(self) -> dict[str, int]: ...
    def effective_strategy(self, shop_id: str, group_id: str = "") -> int: ...
    def decision_counts(self) -> list[list[int]]: ...
    # §11 waiting positions, §12 retries
    def waiting_position(self, shop_id: str, conversation_id: str) -> tuple[int, int | None] | None: ...
    def retry_count(self) -> int: ...

    # snapshots
    def export_state(self) -> dict[str, Any]: ...
    def import_state(self, state: dict[str, Any]) -> None: ...
