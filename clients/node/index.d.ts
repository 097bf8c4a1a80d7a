// Types of the dispatch.v1 Node.js client (index.js). Messages are plain
// objects as @grpc/proto-loader gives them: camelCase fields, enum names as
// strings, 64-bit integers as strings, Timestamps as {seconds, nanos}.
import * as grpc from '@grpc/grpc-js';

export { grpc };
export const status: typeof grpc.status;
export const PROTOS_DIR: string;
export const pb: any;
export function loadPackage(protosDir?: string): any;

export interface Timestamp { seconds: string | number; nanos: number }
export interface Duration { seconds: string | number; nanos: number }
export function timestamp(ms: number | Date): Timestamp;
export function timestampMs(ts: Timestamp | null | undefined): number | null;

export type Reason =
  | 'REASON_UNSPECIFIED' | 'REASON_DIRECT' | 'REASON_OFFLINE_MAIN_ACCOUNT' | 'REASON_OFFLINE_PROXY_ACCOUNT'
  | 'REASON_OFFLINE_MESSAGE_POOL' | 'REASON_OFFLINE_STAGING' | 'REASON_AFFINITY' | 'REASON_AFFINITY_HELD'
  | 'REASON_EXCLUSIVE' | 'REASON_ROBOT' | 'REASON_GROUP' | 'REASON_FALLBACK' | 'REASON_QUEUED';
export type Strategy =
  | 'STRATEGY_UNSPECIFIED' | 'STRATEGY_LEAST_SATURATION' | 'STRATEGY_FEWEST_TODAY'
  | 'STRATEGY_CAPACITY_ROUND_ROBIN' | 'STRATEGY_FEWEST_UNREAD' | 'STRATEGY_WEIGHTED_BUSYNESS';
export type Presence = 'PRESENCE_UNSPECIFIED' | 'PRESENCE_ONLINE' | 'PRESENCE_SUSPENDED' | 'PRESENCE_OFFLINE';
export type OrderState = string; // 'ORDER_STATE_NO_ORDER', ... (common.proto)

export interface DispatchRequest {
  shopId: string; buyerId?: string; conversationId?: string; at?: Timestamp;
  type?: string; source?: string; orderState?: OrderState; toAccount?: string; trace?: boolean;
}
export interface RpcStatus { code: number; message: string; details: unknown[] }
export interface DispatchResponse {
  agentId: string; reason: Reason; groupId: string; trace: string[]; conversationId: string; error: RpcStatus | null;
}
export interface Assignment {
  shopId: string; conversationId: string; buyerId: string; agentId: string; reason: Reason; at: Timestamp | null;
}
export interface ShopConfig {
  shopId: string; mainAccount: string; strategy?: Strategy; affinityWindow?: Duration; offlineGrace?: Duration;
  affinityMayExceedCapacity?: boolean; exclusiveDirect?: boolean; robotFirst?: boolean; robotAgentId?: string;
  offlineRule?: string; proxyAccount?: string; stagingFirstCap?: number; busyThreshold?: number;
  mainAccountMode?: string; mobileDispatch?: boolean; timezone?: string; tieSeed?: string;
}
export interface Agent {
  shopId: string; agentId: string; role?: string; weight?: number; maxCapacity: number;
  createdAt?: Timestamp; chatPermission?: boolean;
}
export interface Group {
  shopId: string; groupId: string; members?: string[]; orderStates?: OrderState[]; sources?: string[];
  robotEnabled?: boolean; robotAgentId?: string; strategy?: Strategy;
}

export interface DispatchStreamHandle {
  call: grpc.ClientDuplexStream<any, any>;
  send(requests: DispatchRequest[]): Promise<DispatchResponse[]>;
  end(): void;
}
export interface WatchStream extends grpc.ClientReadableStream<Assignment> { ready: Promise<grpc.Metadata> }

export interface ClientOptions { credentials?: grpc.ChannelCredentials; timeoutMs?: number; channelOptions?: grpc.ChannelOptions }

export class DispatchClient {
  constructor(target: string, options?: ClientOptions);
  waitForReady(timeoutMs?: number): Promise<void>;
  close(): void;
  dispatch(request: DispatchRequest): Promise<DispatchResponse>;
  dispatchBatch(requests: DispatchRequest[]): Promise<DispatchResponse[]>;
  dispatchStream(): DispatchStreamHandle;
  setPresence(request: { shopId: string; agentId: string; presence: Presence; client?: string; at?: Timestamp }): Promise<{ assignments: Assignment[] }>;
  reportConversation(request: Record<string, unknown>): Promise<{ agentId: string; assignments: Assignment[] }>;
  claimFromPool(request: { shopId: string; agentId: string; conversationId?: string; at?: Timestamp }): Promise<{ conversationId: string; buyerId: string; agentId: string }>;
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
