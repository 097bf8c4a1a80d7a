// Types of the dispatch.v1 Node.js client (index.js). Messages are plain
// objects as @grpc/proto-loader gives them: camelCase fields, enum names as
// strings, 64-bit integers as strings, Timestamps as {seconds, nanos}.
import * as grpc from '@grpc/grpc-js';
import { Readable } from 'node:stream';

export { grpc };
export const status: typeof grpc.status;
export const PROTOS_DIR: string;
export const pb: any;
export function loadPackage(protosDir?: string): any;

export interface Timestamp { seconds: string | number; nanos: number }
export interface Duration { seconds: string | number; nanos: number }
export function timestamp(ms: number | Date): Timestamp;
export function timestampMs(ts: Timestamp | null | undefined): number | null;
/** Most operations in one OperateRequest (4096). */
export const MAX_BATCH: number;
/** An Error shaped like grpc-js's ServiceError ("<code> <NAME>: <details>"). */
export function statusError(code: grpc.status, details: string, metadata?: grpc.Metadata): ServiceError;

export type Reason =
  | 'REASON_UNSPECIFIED' | 'REASON_DIRECT' | 'REASON_OFFLINE_MAIN_ACCOUNT' | 'REASON_OFFLINE_PROXY_ACCOUNT'
  | 'REASON_OFFLINE_MESSAGE_POOL' | 'REASON_OFFLINE_STAGING' | 'REASON_AFFINITY' | 'REASON_AFFINITY_HELD'
  | 'REASON_EXCLUSIVE' | 'REASON_ROBOT' | 'REASON_GROUP' | 'REASON_FALLBACK' | 'REASON_QUEUED'
  /** On Assignments only (spec §10, §11): re-routed for silence, reclaimed from an offline agent, queue timeout. */
  | 'REASON_REROUTED' | 'REASON_RECLAIMED' | 'REASON_QUEUE_TIMEOUT';
export type Strategy =
  | 'STRATEGY_UNSPECIFIED' | 'STRATEGY_LEAST_SATURATION' | 'STRATEGY_FEWEST_TODAY'
  | 'STRATEGY_CAPACITY_ROUND_ROBIN' | 'STRATEGY_FEWEST_UNREAD' | 'STRATEGY_WEIGHTED_BUSYNESS';
export type Presence = 'PRESENCE_UNSPECIFIED' | 'PRESENCE_ONLINE' | 'PRESENCE_SUSPENDED' | 'PRESENCE_OFFLINE';
export type OrderState = string; // 'ORDER_STATE_NO_ORDER', ... (common.proto)

export interface DispatchRequest {
  shopId: string; buyerId?: string; conversationId?: string; at?: Timestamp;
  type?: string; source?: string; orderState?: OrderState; toAccount?: string; trace?: boolean;
  /** 0..9 (default 0): waiting conversations are handed out highest priority first, then oldest first. */
  priority?: number;
}
export interface RpcStatus { code: number; message: string; details: unknown[] }
export interface DispatchResponse {
  agentId: string; reason: Reason; groupId: string; trace: string[]; conversationId: string; error: RpcStatus | null;
  /** A waiting answer (QUEUED, OFFLINE_STAGING, OFFLINE_MESSAGE_POOL): its place, 1 = next; 0 otherwise. */
  position: number;
  /** A waiting answer: the estimated wait from the shop's recent hand-out rate; null when unknown. */
  estimatedWait: Duration | null;
}
export interface Assignment {
  shopId: string; conversationId: string; buyerId: string; agentId: string; reason: Reason; at: Timestamp | null;
  /** REASON_REROUTED and REASON_RECLAIMED: the agent it was taken from (spec §10); '' otherwise. */
  previousAgentId: string;
}
export interface ShopConfig {
  shopId: string; mainAccount: string; strategy?: Strategy; affinityWindow?: Duration; offlineGrace?: Duration;
  affinityMayExceedCapacity?: boolean; exclusiveDirect?: boolean; robotFirst?: boolean; robotAgentId?: string;
  offlineRule?: string; proxyAccount?: string; stagingFirstCap?: number; busyThreshold?: number;
  mainAccountMode?: string; mobileDispatch?: boolean; timezone?: string; tieSeed?: string;
  /** Spec §10: re-route a conversation its agent has not answered this long after receiving it; unset: off. */
  rerouteUnansweredAfter?: Duration;
  /** Spec §10: re-routes per conversation (0: 1). */
  maxReroutes?: number;
  /** Spec §10: reclaim the awaiting-reply conversations of an agent OFFLINE this long; unset: off. */
  reclaimAfterOffline?: Duration;
  /** Spec §11: move a conversation that waited this long in the queue to the message pool; unset: off. */
  maxQueueWait?: Duration;
  /** Spec §10: opening hours in the shop's time zone; unset or empty: always open. */
  businessHours?: BusinessHours;
  /** Spec §10: while closed, still honour a buyer's recent contact. */
  recentContactsAfterHours?: boolean;
}
/** Spec §10: weekly opening intervals plus dated exceptions, in the shop's time zone. */
export interface BusinessHours { weekly?: WeeklyInterval[]; exceptions?: DateException[] }
/** dayOfWeek 0 = Monday; minutes from local midnight; a close at or before the open ends the next day. */
export interface WeeklyInterval { dayOfWeek: number; openMinute: number; closeMinute: number }
export interface DayInterval { openMinute: number; closeMinute: number }
/** A local date "YYYY-MM-DD": closed all day, or its own intervals. */
export interface DateException { date: string; closed?: boolean; intervals?: DayInterval[] }
export interface Agent {
  shopId: string; agentId: string; role?: string; weight?: number; maxCapacity: number;
  createdAt?: Timestamp; chatPermission?: boolean;
}
export interface Group {
  shopId: string; groupId: string; members?: string[]; orderStates?: OrderState[]; sources?: string[];
  robotEnabled?: boolean; robotAgentId?: string; strategy?: Strategy;
  /** Spec §10: the group's own re-route delay (unset: the shop's). */
  rerouteUnansweredAfter?: Duration;
  /** Spec §10: the group's own opening hours (unset: always open; the shop's hours apply too). */
  businessHours?: BusinessHours;
}

export interface SetPresenceRequest { shopId: string; agentId: string; presence: Presence; client?: string; at?: Timestamp }
export interface SetPresenceResponse { assignments: Assignment[] }
export type ConversationEvent =
  | 'CONVERSATION_EVENT_UNSPECIFIED' | 'CONVERSATION_EVENT_BUYER_MESSAGE' | 'CONVERSATION_EVENT_AGENT_REPLY'
  | 'CONVERSATION_EVENT_CLOSED' | 'CONVERSATION_EVENT_TRANSFERRED' | 'CONVERSATION_EVENT_ASSIGNED';
export interface ReportConversationRequest {
  shopId: string; conversationId: string; buyerId?: string; event: ConversationEvent; agentId?: string;
  toAgentId?: string; toGroupId?: string; at?: Timestamp;
}
export interface ReportConversationResponse { agentId: string; assignments: Assignment[] }
export interface ClaimFromPoolRequest { shopId: string; agentId: string; conversationId?: string; at?: Timestamp }
export interface ClaimFromPoolResponse { conversationId: string; buyerId: string; agentId: string }

/** One operation of Operate/OperateStream: exactly one kind is set. */
export type Operation =
  | { dispatch: DispatchRequest }
  | { setPresence: SetPresenceRequest }
  | { reportConversation: ReportConversationRequest }
  | { claimFromPool: ClaimFromPoolRequest };
export type OperationKind = 'dispatch' | 'setPresence' | 'reportConversation' | 'claimFromPool';
/** The answer to one Operation: `kind` names the result that is set; unset (undefined) with `error`. */
export interface OperationResult {
  kind?: OperationKind;
  dispatch?: DispatchResponse;
  setPresence?: SetPresenceResponse;
  reportConversation?: ReportConversationResponse;
  claimFromPool?: ClaimFromPoolResponse;
  /** The operation's own status (code: a grpc.status number), or null on success. */
  error: RpcStatus | null;
}
export interface OperateResponse { results: OperationResult[] }

/** A rejected call: as grpc-js's ServiceError (the batched path builds the same shape). */
export interface ServiceError extends Error { code: grpc.status; details: string; metadata: grpc.Metadata }

export interface OperateStreamHandle {
  call: grpc.ClientDuplexStream<any, any>;
  send(operations: Operation[]): Promise<OperationResult[]>;
  end(): void;
}

/** Counters of the automatic batcher (for tests and monitoring). */
export interface BatchStats {
  /** OperateRequests written on the shared stream. */
  batches: number;
  /** Operations in them. */
  operations: number;
  /** OperateStreams opened (1 + reconnects + re-opens after idle). */
  streams: number;
  /** The largest batch sent. */
  largestBatch: number;
  /** The most operations in flight (sent, not yet answered) at once. */
  mostInFlight: number;
}

/** The automatic batcher of a client (`client.batcher`; null with autoBatch: false). */
export interface AutoBatcher {
  /** false once the server answered UNIMPLEMENTED for OperateStream: unary RPCs from then on. */
  readonly enabled: boolean;
  /** Operations sent and not yet answered. */
  readonly inFlight: number;
  /** Operations waiting to be sent (for the next turn, or for room in flight). */
  readonly queued: number;
  readonly stats: BatchStats;
  /** Break the current stream on purpose: its calls in flight reject UNAVAILABLE; the next call opens a new one. */
  reset(): void;
}

export interface DispatchStreamHandle {
  call: grpc.ClientDuplexStream<any, any>;
  send(requests: DispatchRequest[]): Promise<DispatchResponse[]>;
  end(): void;
}
/** Assignments one at a time, read from WatchAssignmentBatches; emits 'data', 'metadata', 'status', 'error', 'end'. */
export interface WatchStream extends Readable {
  /** Resolves once the subscription is registered: every hand-out after it is delivered. */
  ready: Promise<grpc.Metadata>;
  /** Ends the watch; the stream then emits 'error' with code CANCELLED. */
  cancel(): void;
  /** The underlying WatchAssignmentBatches call. */
  call: grpc.ClientReadableStream<{ assignments: Assignment[] }>;
}

export interface ClientOptions {
  credentials?: grpc.ChannelCredentials;
  /** Deadline of each call, batched ones too (default 30000; 0: none). */
  timeoutMs?: number;
  channelOptions?: grpc.ChannelOptions;
  /** dispatch/setPresence/reportConversation/claimFromPool share one OperateStream, batched per event-loop turn (default true). */
  autoBatch?: boolean;
  /** Most operations per batch (default 1024, 1..4096). */
  maxBatch?: number;
  /** 0 (default): flush when the current event-loop turn is done (setImmediate); more: wait up to this long to fill a batch. */
  maxDelayMs?: number;
  /** Most operations sent and not yet answered (default 8192, >= maxBatch); more calls wait their turn. */
  maxInFlight?: number;
  /** Half-close the stream after this long with nothing in flight (default 1000; Infinity: never). */
  idleMs?: number;
}

export class DispatchClient {
  constructor(target: string, options?: ClientOptions);
  /** The batcher's counters (zeros with autoBatch: false). */
  readonly batchStats: BatchStats;
  readonly batcher: AutoBatcher | null;
  waitForReady(timeoutMs?: number): Promise<void>;
  /** Closes the channel; batched calls still queued are sent first. */
  close(): void;
  dispatch(request: DispatchRequest): Promise<DispatchResponse>;
  dispatchBatch(requests: DispatchRequest[]): Promise<DispatchResponse[]>;
  dispatchStream(): DispatchStreamHandle;
  setPresence(request: SetPresenceRequest): Promise<SetPresenceResponse>;
  reportConversation(request: ReportConversationRequest): Promise<ReportConversationResponse>;
  claimFromPool(request: ClaimFromPoolRequest): Promise<ClaimFromPoolResponse>;
  /** Operate (unary, never batched): the operations applied in order, one result each. */
  operate(operations: Operation[]): Promise<OperateResponse>;
  /** OperateStream by hand: one results batch per sent batch, in order. */
  operateStream(): OperateStreamHandle;
  watchAssignments(shopIds?: string[]): WatchStream;
  putShop(shop: ShopConfig): Promise<ShopConfig>;
  deleteShop(shopId: string): Promise<{}>;
  putAgent(agent: Agent): Promise<{}>;
  deleteAgent(shopId: string, agentId: string): Promise<{}>;
  putGroup(group: Group): Promise<{}>;
  deleteGroup(shopId: string, groupId: string): Promise<{}>;
  setExclusiveAgent(shopId: string, buyerId: string, agentId: string): Promise<{}>;
  deleteExclusiveAgent(shopId: string, buyerId: string): Promise<{}>;
  getShopState(shopId: string): Promise<any>;
  listShops(): Promise<string[]>;
  getConversation(shopId: string, conversationId: string): Promise<any>;
  getBuyer(shopId: string, buyerId: string): Promise<any>;
}

// ---- The cluster client (cluster.js, issue 15)

/** CRC-32/IEEE (zlib's) of a string's UTF-8 bytes or of a Buffer. */
export function crc32(data: string | Uint8Array): number;
/** The same CRC-32 by table (used when the runtime lacks zlib.crc32). */
export function crc32Table(bytes: Uint8Array): number;
/** A shop's partition: crc32(shopId) mod partitionCount. */
export function partitionOf(shopId: string, partitionCount: number): number;
export const WRONG_NODE: 'WRONG_NODE';
export const ERROR_DOMAIN: 'dispatch.v1';

/** One node of a cluster map, as GetClusterMap answers it; partitions are half-open ranges [start, end). */
export interface ClusterNode { name: string; address: string; partitions: { start: number; end: number }[] }
/** GetClusterMap's answer: partitionCount 0 (and no nodes) when the server is not in a cluster. */
export interface ClusterMap { partitionCount: number; epoch: string; nodes: ClusterNode[]; node?: string }

/** What a WRONG_NODE refusal says (google.rpc.ErrorInfo metadata). */
export interface WrongNode { shopId: string; partition: number; owner: string; ownerAddress: string; epoch: string }
/** The WRONG_NODE refusal in a rejected call's error or in a batch item's `error` (a google.rpc.Status), or null. */
export function wrongNodeOf(error: unknown): WrongNode | null;
/** A google.rpc.Status from its bytes (e.g. the `grpc-status-details-bin` trailer). */
export function decodeStatus(bytes: Uint8Array): { code: number; message: string; details: { typeUrl: string; value: Buffer }[] };

/** A cluster map as the client routes by it. */
export class Routes {
  constructor(map: ClusterMap, fallback: string);
  readonly map: ClusterMap;
  readonly partitionCount: number;
  readonly epoch: string;
  /** The node that answered ('' outside a cluster). */
  readonly node: string;
  /** Where every shop goes when partitionCount is 0: the address that answered. */
  readonly fallback: string;
  /** Node name -> address. */
  readonly nodes: Map<string, string>;
  /** Every node's address, in map order (the fallback alone outside a cluster). */
  readonly addresses: string[];
  addressOf(shopId: string): string;
  group(shopIds: Iterable<string>): Map<string, string[]>;
}

export interface ClusterClientOptions extends ClientOptions {
  /** A map to start from instead of asking a seed (GetClusterMapResponse-shaped). */
  clusterMap?: ClusterMap | null;
  /** Deadline of each GetClusterMap call (default 5000). */
  mapTimeoutMs?: number;
}

/** A rejected call whose retry on the owner was refused as WRONG_NODE again. */
export interface WrongNodeServiceError extends ServiceError { wrongNode: WrongNode }

/** Assignments of every node's WatchAssignmentBatches, merged. */
export interface ClusterWatchStream extends Readable {
  /** Resolves once every node's watch is registered. */
  ready: Promise<ClusterWatchStream>;
  /** Ends every node's watch; the stream then emits 'error' with code CANCELLED. */
  cancel(): void;
  /** The per-node watches open now (each with its `address`). */
  readonly sources: (WatchStream & { address: string })[];
}

/**
 * The DispatchClient methods over a cluster: each call goes to the node that owns its
 * shop (one DispatchClient per node, opened on first use); batches are split by node and
 * answered in order; a WRONG_NODE refusal refreshes the map and is retried once.
 */
export class ClusterClient {
  constructor(seeds: string | string[], options?: ClusterClientOptions);
  readonly seeds: string[];
  /** The current map (null until fetched). */
  readonly routes: Routes | null;
  /** GetClusterMap calls answered. */
  readonly mapFetches: number;
  /** Calls and batch items retried on another node after a WRONG_NODE refusal. */
  readonly wrongNodeRetries: number;
  /** The client of one node (opened on first use). */
  client(address: string): DispatchClient;
  /** The per-node clients opened so far, by address. */
  clients(): Map<string, DispatchClient>;
  clientFor(shopId: string): Promise<DispatchClient>;
  /** Fetch the map again (from `prefer` first, then the known nodes, then the seeds). */
  refresh(prefer?: string[], minEpoch?: string | bigint): Promise<Routes>;
  /** Resolves once the map is fetched and every node's channel is connected. */
  waitForReady(timeoutMs?: number): Promise<void>;
  /** Closes every node's client. */
  close(): void;
  dispatch(request: DispatchRequest): Promise<DispatchResponse>;
  /** Split by node, concurrently; in request order. A node's whole-call failure becomes its items' `error` (unless every node failed). */
  dispatchBatch(requests: DispatchRequest[]): Promise<DispatchResponse[]>;
  setPresence(request: SetPresenceRequest): Promise<SetPresenceResponse>;
  reportConversation(request: ReportConversationRequest): Promise<ReportConversationResponse>;
  claimFromPool(request: ClaimFromPoolRequest): Promise<ClaimFromPoolResponse>;
  /** Operate split by node, concurrently; one result per operation, in order. */
  operate(operations: Operation[]): Promise<OperateResponse>;
  watchAssignments(shopIds?: string[]): ClusterWatchStream;
  putShop(shop: ShopConfig): Promise<ShopConfig>;
  deleteShop(shopId: string): Promise<{}>;
  putAgent(agent: Agent): Promise<{}>;
  deleteAgent(shopId: string, agentId: string): Promise<{}>;
  putGroup(group: Group): Promise<{}>;
  deleteGroup(shopId: string, groupId: string): Promise<{}>;
  setExclusiveAgent(shopId: string, buyerId: string, agentId: string): Promise<{}>;
  deleteExclusiveAgent(shopId: string, buyerId: string): Promise<{}>;
  getShopState(shopId: string): Promise<any>;
  /** Every shop of every node, sorted. */
  listShops(): Promise<string[]>;
  getConversation(shopId: string, conversationId: string): Promise<any>;
  getBuyer(shopId: string, buyerId: string): Promise<any>;
}
