"""Every message and enum of ``dispatch.v1`` in one namespace: ``pb.DispatchRequest``, ``pb.Reason``...

The classes are the client's own generated code (``dispatch_client._gen``, made by
``protos/generate.py`` from the same protos as the server's): the client installs without
the server. In a process that has both, they register the same descriptors, and protobuf's
(upb) runtime gives both the same classes."""

from ._gen.dispatch.v1.admin_pb2 import (
    Agent,
    AgentState,
    DeleteAgentRequest,
    DeleteExclusiveAgentRequest,
    DeleteGroupRequest,
    DeleteShopRequest,
    GetBuyerRequest,
    GetBuyerResponse,
    GetConversationRequest,
    GetConversationResponse,
    GetShopStateRequest,
    Group,
    GroupState,
    ListShopsRequest,
    ListShopsResponse,
    PutAgentRequest,
    PutGroupRequest,
    PutShopRequest,
    PutShopResponse,
    SetExclusiveAgentRequest,
    ShopConfig,
    ShopState,
    WaitingConversation,
)
from ._gen.dispatch.v1.common_pb2 import (
    Client,
    ConversationEvent,
    ConversationType,
    MainAccountMode,
    OfflineRule,
    OrderState,
    Presence,
    Reason,
    Role,
    Strategy,
    WaitKind,
)
from ._gen.dispatch.v1.dispatch_pb2 import (
    Assignment,
    ClaimFromPoolRequest,
    ClaimFromPoolResponse,
    DispatchBatchRequest,
    DispatchBatchResponse,
    DispatchRequest,
    DispatchResponse,
    OperateRequest,
    OperateResponse,
    Operation,
    OperationResult,
    ReportConversationRequest,
    ReportConversationResponse,
    SetPresenceRequest,
    SetPresenceResponse,
    WatchAssignmentBatchesRequest,
    WatchAssignmentBatchesResponse,
    WatchAssignmentsRequest,
)

__all__ = [
    "Agent", "AgentState", "Assignment", "ClaimFromPoolRequest", "ClaimFromPoolResponse", "Client",
    "ConversationEvent", "ConversationType", "DeleteAgentRequest", "DeleteExclusiveAgentRequest",
    "DeleteGroupRequest", "DeleteShopRequest", "DispatchBatchRequest", "DispatchBatchResponse",
    "DispatchRequest", "DispatchResponse", "GetBuyerRequest", "GetBuyerResponse", "GetConversationRequest",
    "GetConversationResponse", "GetShopStateRequest", "Group", "GroupState", "ListShopsRequest",
    "ListShopsResponse", "MainAccountMode", "OfflineRule", "OperateRequest", "OperateResponse", "Operation",
    "OperationResult", "OrderState", "Presence", "PutAgentRequest",
    "PutGroupRequest", "PutShopRequest", "PutShopResponse", "Reason", "ReportConversationRequest",
    "ReportConversationResponse", "Role", "SetExclusiveAgentRequest", "SetPresenceRequest",
    "SetPresenceResponse", "ShopConfig", "ShopState", "Strategy", "WaitKind", "WaitingConversation",
    "WatchAssignmentBatchesRequest",
    "WatchAssignmentBatchesResponse",
    "WatchAssignmentsRequest",
]  # fmt: skip
