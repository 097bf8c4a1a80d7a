'use strict';
/**
 * ClusterClient (issue 15): the DispatchClient methods over a cluster of
 * dispatcher nodes, each call sent to the node that owns its shop.
 *
 * A shop's partition is CRC32(shopId as UTF-8) mod P (zlib's CRC-32);
 * dispatch.v1.Cluster/GetClusterMap says which node owns which partitions
 * (protos/dispatch/v1/cluster.proto). The client asks a seed for that map,
 * keeps one DispatchClient per node (opened on first use: per-node automatic
 * batching comes with it) and routes each call by its shopId. A server outside
 * any cluster answers partitionCount 0: every call goes to that seed.
 *
 * A node that does not own a shop refuses with FAILED_PRECONDITION and a
 * google.rpc.ErrorInfo (reason WRONG_NODE: owner, owner_address, epoch), for a
 * whole call or as one item's `error` in a batch. The client then refreshes its
 * map (asking the named owner first) and retries that call or those items once
 * on the owner; a second refusal rejects with the error, `err.wrongNode` naming
 * the owner (a batch keeps the item's error: `wrongNodeOf(item.error)`).
 */
const zlib = require('node:zlib');
const { Readable } = require('node:stream');
const { DispatchClient, pb, grpc, statusError } = require('./index');

const WRONG_NODE = 'WRONG_NODE';
const ERROR_DOMAIN = 'dispatch.v1';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';
const DETAILS_KEY = 'grpc-status-details-bin';

// ---------------------------------------------------------------- CRC-32 (IEEE, zlib's)

let CRC_TABLE = null;

/** CRC-32/IEEE by table, for a Node without zlib.crc32 (added in 20.15 / 22.2). */
function crc32Table(bytes) {
  if (CRC_TABLE === null) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** CRC-32 of a string's UTF-8 bytes (or of a Buffer), as zlib and Python's zlib.crc32 compute it. */
const crc32 = typeof zlib.crc32 === 'function'
  ? (data) => zlib.crc32(typeof data === 'string' ? Buffer.from(data, 'utf8') : data) >>> 0
  : (data) => crc32Table(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);

/** The shop's partition: CRC-32 of its UTF-8 bytes mod `partitionCount`. */
function partitionOf(shopId, partitionCount) {
  return crc32(shopId) % partitionCount;
}

// ---------------------------------------------------------------- WRONG_NODE

/** Decode protobuf wire fields: [[fieldNumber, value]], a varint's value a Number, a length-delimited one a Buffer. */
function wireFields(buf) {
  const out = [];
  let i = 0;
  const varint = () => {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (i >= buf.length) throw new Error('truncated varint');
      const byte = buf[i++];
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
    }
  };
  while (i < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) out.push([field, varint()]);
    else if (wire === 2) {
      const length = varint();
      if (i + length > buf.length) throw new Error('truncated field');
      out.push([field, buf.subarray(i, i + length)]);
      i += length;
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else throw new Error(`wire type ${wire}`);
  }
  return out;
}

/** A google.rpc.Status from its bytes: { code, message, details: [{ typeUrl, value }] }. */
function decodeStatus(bytes) {
  const status = { code: 0, message: '', details: [] };
  for (const [field, value] of wireFields(bytes)) {
    if (field === 1 && typeof value === 'number') status.code = value;
    else if (field === 2 && Buffer.isBuffer(value)) status.message = value.toString('utf8');
    else if (field === 3 && Buffer.isBuffer(value)) {
      const any = { typeUrl: '', value: Buffer.alloc(0) };
      for (const [f, v] of wireFields(value)) {
        if (f === 1 && Buffer.isBuffer(v)) any.typeUrl = v.toString('utf8');
        else if (f === 2 && Buffer.isBuffer(v)) any.value = v;
      }
      status.details.push(any);
    }
  }
  return status;
}

/** A google.rpc.ErrorInfo from its bytes: { reason, domain, metadata }. */
function decodeErrorInfo(bytes) {
  const info = { reason: '', domain: '', metadata: {} };
  for (const [field, value] of wireFields(bytes)) {
    if (!Buffer.isBuffer(value)) continue;
    if (field === 1) info.reason = value.toString('utf8');
    else if (field === 2) info.domain = value.toString('utf8');
    else if (field === 3) {
      let key = '';
      let entry = '';
      for (const [f, v] of wireFields(value)) {
        if (f === 1 && Buffer.isBuffer(v)) key = v.toString('utf8');
        else if (f === 2 && Buffer.isBuffer(v)) entry = v.toString('utf8');
      }
      info.metadata[key] = entry;
    }
  }
  return info;
}

/** The WRONG_NODE refusal in a google.rpc.Status object (details as Any objects), or null. */
function wrongNodeInStatus(status) {
  if (!status || Number(status.code) !== grpc.status.FAILED_PRECONDITION || !Array.isArray(status.details)) return null;
  for (const any of status.details) {
    if (!any) continue;
    const typeUrl = any.typeUrl ?? any.type_url ?? '';
    if (typeUrl !== ERROR_INFO_TYPE || any.value == null) continue;
    let info;
    try {
      info = decodeErrorInfo(Buffer.from(any.value));
    } catch {
      continue;
    }
    if (info.reason !== WRONG_NODE || info.domain !== ERROR_DOMAIN) continue;
    const m = info.metadata;
    return {
      shopId: m.shop_id || '',
      partition: Number(m.partition || 0),
      owner: m.owner || '',
      ownerAddress: m.owner_address || '',
      epoch: m.epoch || '0',
    };
  }
  return null;
}

// What the server's WRONG_NODE message says (dispatcher/cluster.py WrongNodeError): the automatically
// batched calls reject with the code and message of their operation's status, without its details.
const WRONG_NODE_MESSAGE = /\(partition (\d+)\) belongs to node '([^']*)' at (\S+?), not to this node .*\(cluster map epoch (\d+)\)/;

/**
 * The WRONG_NODE refusal in an error (a rejected call: its `grpc-status-details-bin`
 * trailer, or the message of a batched call's error) or in a batch item's `error`
 * (a google.rpc.Status object): { shopId, partition, owner, ownerAddress, epoch }, or null.
 */
function wrongNodeOf(error) {
  if (!error || typeof error !== 'object') return null;
  if (error.wrongNode) return error.wrongNode;
  if (Array.isArray(error.details)) return wrongNodeInStatus(error); // a google.rpc.Status
  if (error.status && Array.isArray(error.status.details)) {
    const found = wrongNodeInStatus(error.status); // an auto-batched call's operation status
    if (found) return found;
  }
  if (Number(error.code) !== grpc.status.FAILED_PRECONDITION) return null;
  const metadata = error.metadata;
  if (metadata && typeof metadata.get === 'function') {
    for (const bytes of metadata.get(DETAILS_KEY)) {
      if (!Buffer.isBuffer(bytes)) continue;
      try {
        const found = wrongNodeInStatus(decodeStatus(bytes));
        if (found) return found;
      } catch {
        // not a google.rpc.Status: no refusal to read
      }
    }
  }
  const match = WRONG_NODE_MESSAGE.exec(String(error.details || ''));
  if (match) {
    const shop = /^shop (['"])(.*)\1 \(partition/.exec(String(error.details));
    return { shopId: shop ? shop[2] : '', partition: Number(match[1]), owner: match[2], ownerAddress: match[3], epoch: match[4] };
  }
  return null;
}

// ---------------------------------------------------------------- the map

/**
 * A cluster map as the client routes by it: shopId -> the address of its owner.
 * `partitionCount` 0 (a server outside any cluster) routes everything to
 * `fallback`, the address that answered; so does a partition no node claims.
 */
class Routes {
  constructor(map, fallback) {
    this.map = map;
    this.partitionCount = Number(map.partitionCount || 0);
    this.epoch = String(map.epoch || '0');
    this.node = map.node || '';
    this.fallback = fallback;
    /** Node name -> address. */
    this.nodes = new Map();
    const owner = new Array(this.partitionCount).fill(fallback);
    const addresses = [];
    for (const node of map.nodes || []) {
      this.nodes.set(node.name, node.address);
      if (!addresses.includes(node.address)) addresses.push(node.address);
      for (const range of node.partitions || []) {
        const end = Math.min(Number(range.end), this.partitionCount);
        for (let p = Number(range.start || 0); p < end; p++) owner[p] = node.address;
      }
    }
    /** Every node's address, in map order (the fallback alone outside a cluster). */
    this.addresses = this.partitionCount ? addresses : [fallback];
    this._owner = owner;
  }

  get epochBig() { return BigInt(this.epoch); }

  /** The address of the node that owns `shopId`. */
  addressOf(shopId) {
    return this.partitionCount ? this._owner[crc32(String(shopId)) % this.partitionCount] : this.fallback;
  }

  /** Shops by the address of their owner: Map(address -> [shopId]), each shop once. */
  group(shopIds) {
    const out = new Map();
    for (const shop of new Set(shopIds)) {
      const address = this.addressOf(shop);
      if (!out.has(address)) out.set(address, []);
      out.get(address).push(shop);
    }
    return out;
  }
}

function stale(routes, refused) {
  if (!routes) return true;
  return refused.some(([shop, address, wrong]) => routes.epochBig < BigInt(wrong.epoch) || routes.addressOf(shop) === address);
}

function regroup(shops, targets) {
  const out = new Map();
  shops.forEach((shop, i) => {
    if (!out.has(targets[i])) out.set(targets[i], []);
    out.get(targets[i]).push(shop);
  });
  return out;
}

function shopOfOperation(operation) {
  if (!operation) return '';
  const request = operation.dispatch || operation.setPresence || operation.reportConversation || operation.claimFromPool;
  return request && request.shopId ? String(request.shopId) : '';
}

function callStatus(err) {
  return { code: Number(err && err.code) || grpc.status.UNKNOWN, message: String((err && (err.details || err.message)) || err), details: [] };
}

function itemStatus(item) {
  return item && item.error && item.error.code ? item.error : null;
}

function dispatchFailure(request, status) {
  return {
    agentId: '', reason: 'REASON_UNSPECIFIED', groupId: '', trace: [], conversationId: (request && request.conversationId) || '',
    error: status, position: 0, estimatedWait: null,
  };
}

function operationFailure(_operation, status) {
  return { error: status };
}

// ---------------------------------------------------------------- the client

/**
 * The DispatchClient methods over a cluster. `seeds`: addresses to ask for the
 * map (a string or an array; the first that answers). Options: those of
 * DispatchClient (each node's client gets them), plus `clusterMap` (a
 * GetClusterMapResponse-shaped map to start from instead of asking) and
 * `mapTimeoutMs` (each GetClusterMap call's deadline, default 5000).
 */
class ClusterClient {
  constructor(seeds, { clusterMap = null, mapTimeoutMs = 5000, ...clientOptions } = {}) {
    this.seeds = typeof seeds === 'string' ? [seeds] : [...(seeds || [])];
    if (this.seeds.length === 0) throw new RangeError('a ClusterClient needs at least one seed address');
    this.mapTimeoutMs = mapTimeoutMs;
    this.clientOptions = clientOptions;
    this._clients = new Map();
    this._clusterStubs = new Map();
    /** The current map (null until fetched). */
    this.routes = clusterMap ? new Routes(clusterMap, this.seeds[0]) : null;
    this._refreshing = null;
    this._closed = false;
    /** GetClusterMap calls answered. */
    this.mapFetches = 0;
    /** Calls and batch items retried on another node after a WRONG_NODE refusal. */
    this.wrongNodeRetries = 0;
  }

  /** The DispatchClient of one node (opened on first use). */
  client(address) {
    let client = this._clients.get(address);
    if (client === undefined) {
      if (this._closed) throw new Error('the ClusterClient is closed');
      client = new DispatchClient(address, this.clientOptions);
      this._clients.set(address, client);
    }
    return client;
  }

  /** The per-node clients opened so far: Map(address -> DispatchClient). */
  clients() { return new Map(this._clients); }

  /** The client of the node that owns `shopId` by the current map. */
  async clientFor(shopId) {
    return this.client((this.routes || await this.refresh()).addressOf(shopId));
  }

  /**
   * Fetch the map again: from `prefer` first, then the known nodes, then the
   * seeds; the first answer with an epoch of at least `minEpoch` (else the
   * newest) replaces the current map unless that one is newer. Concurrent
   * refreshes share one fetch. Resolves with the map (Routes).
   */
  refresh(prefer = [], minEpoch = '0') {
    if (this._refreshing === null) {
      this._refreshing = this._fetch(prefer, BigInt(minEpoch)).finally(() => { this._refreshing = null; });
    }
    return this._refreshing;
  }

  _clusterStub(address) {
    let stub = this._clusterStubs.get(address);
    if (stub === undefined) {
      const client = this.client(address);
      const credentials = this.clientOptions.credentials || grpc.credentials.createInsecure();
      stub = new pb.Cluster(address, credentials, { channelOverride: client.dispatchStub.getChannel() });
      this._clusterStubs.set(address, stub);
    }
    return stub;
  }

  _getMap(address) {
    return new Promise((resolve, reject) => {
      const stub = this._clusterStub(address);
      stub.getClusterMap({}, new grpc.Metadata(), { deadline: new Date(Date.now() + this.mapTimeoutMs) }, (err, map) => {
        if (err && err.code === grpc.status.UNIMPLEMENTED) resolve({ partitionCount: 0, epoch: '0', nodes: [], node: '' });
        else if (err) reject(err);
        else resolve(map);
      });
    });
  }

  async _fetch(prefer, minEpoch) {
    const known = this.routes ? this.routes.addresses : [];
    const candidates = [...new Set([...prefer, ...known, ...this.seeds])].filter(Boolean);
    let best = null;
    let error = null;
    for (const address of candidates) {
      let map;
      try {
        map = await this._getMap(address);
      } catch (err) {
        error = err;
        continue;
      }
      this.mapFetches += 1;
      const routes = new Routes(map, address);
      if (best === null || routes.epochBig > best.epochBig) best = routes;
      if (routes.epochBig >= minEpoch) break;
    }
    if (best === null) throw error;
    if (this.routes === null || best.epochBig >= this.routes.epochBig) this.routes = best;
    return this.routes;
  }

  /** Where to retry each refused [shopId, address, wrongNode]: its owner by a fresh map, else the one the refusal names. */
  async _afterRefusal(refused) {
    this.wrongNodeRetries += refused.length;
    let routes = this.routes;
    if (stale(routes, refused)) {
      const minEpoch = refused.reduce((m, [, , wrong]) => (BigInt(wrong.epoch) > m ? BigInt(wrong.epoch) : m), 0n);
      try {
        routes = await this.refresh(refused.map(([, , wrong]) => wrong.ownerAddress), minEpoch);
      } catch {
        routes = this.routes; // no map to be had: go by what the refusals say
      }
    }
    return refused.map(([shop, address, wrong]) => {
      let target = routes ? routes.addressOf(shop) : '';
      if ((!target || target === address) && wrong.ownerAddress) target = wrong.ownerAddress;
      return target || address;
    });
  }

  /** Run `call(client)` on the owner's client; after a WRONG_NODE refusal, once more on the new owner. */
  async _onShop(shopId, call) {
    const shop = shopId == null ? '' : String(shopId);
    const routes = this.routes || await this.refresh();
    const address = routes.addressOf(shop);
    let wrong;
    try {
      return await call(this.client(address));
    } catch (err) {
      wrong = wrongNodeOf(err);
      if (!wrong) throw err;
    }
    const [target] = await this._afterRefusal([[shop, address, wrong]]);
    try {
      return await call(this.client(target));
    } catch (err) {
      const again = wrongNodeOf(err);
      if (again && err && typeof err === 'object') err.wrongNode = again;
      throw err;
    }
  }

  /** Items split by owner, sent concurrently, answered in item order; refused items go once more to their owners. */
  async _split(items, shopOf, send, fail) {
    if (items.length === 0) return [];
    const out = new Array(items.length);
    const state = { sentTo: 0, failures: [] };
    const shops = items.map(shopOf);
    const routes = this.routes || await this.refresh();
    const all = items.map((_, i) => i);
    const refused = await this._sendSplit(state, out, items, all, all.map((i) => routes.addressOf(shops[i])), send, fail, false);
    if (refused.length > 0) {
      const targets = await this._afterRefusal(refused.map(([i, address, wrong]) => [shops[i], address, wrong]));
      await this._sendSplit(state, out, items, refused.map(([i]) => i), targets, send, fail, true);
    }
    if (state.failures.length > 0 && state.failures.length === state.sentTo) throw state.failures[0];
    return out;
  }

  async _sendSplit(state, out, items, indexes, addresses, send, fail, retrying) {
    const groups = new Map();
    indexes.forEach((index, j) => {
      if (!groups.has(addresses[j])) groups.set(addresses[j], []);
      groups.get(addresses[j]).push(index);
    });
    const refused = [];
    await Promise.all([...groups].map(async ([address, members]) => {
      let answer;
      try {
        answer = await send(this.client(address), members.map((i) => items[i]));
      } catch (err) {
        answer = err;
      }
      state.sentTo += 1;
      if (!Array.isArray(answer)) {
        state.failures.push(answer);
        const status = callStatus(answer);
        for (const i of members) out[i] = fail(items[i], status);
        return;
      }
      if (answer.length !== members.length) {
        const status = { code: grpc.status.INTERNAL, message: `node ${address} answered ${answer.length} results for ${members.length} items`, details: [] };
        for (const i of members) out[i] = fail(items[i], status);
        return;
      }
      members.forEach((i, j) => {
        out[i] = answer[j];
        if (!retrying) {
          const wrong = wrongNodeInStatus(itemStatus(answer[j]));
          if (wrong) refused.push([i, address, wrong]);
        }
      });
    }));
    return refused;
  }

  /** Resolves once the map is fetched and every node's channel is connected. */
  async waitForReady(timeoutMs = 10000) {
    const routes = await this.refresh();
    await Promise.all(routes.addresses.map((address) => this.client(address).waitForReady(timeoutMs)));
  }

  /** Closes every node's client (their batched calls still queued are sent first). */
  close() {
    this._closed = true;
    for (const client of this._clients.values()) client.close();
    this._clients.clear();
    this._clusterStubs.clear();
  }

  // ---- dispatch.v1.Dispatch
  dispatch(request) { return this._onShop(request && request.shopId, (c) => c.dispatch(request)); }
  setPresence(request) { return this._onShop(request && request.shopId, (c) => c.setPresence(request)); }
  reportConversation(request) { return this._onShop(request && request.shopId, (c) => c.reportConversation(request)); }
  claimFromPool(request) { return this._onShop(request && request.shopId, (c) => c.claimFromPool(request)); }

  /**
   * DispatchBatch split by node (concurrently); the responses in request order.
   * A node's whole-call failure becomes the `error` of each of its requests,
   * unless every node failed: then the call rejects with that error.
   */
  dispatchBatch(requests) {
    return this._split([...requests], (r) => String((r && r.shopId) || ''), (c, part) => c.dispatchBatch(part), dispatchFailure);
  }

  /** Operate split by node (concurrently): `{ results }`, one per operation, in order (failures as in dispatchBatch). */
  async operate(operations) {
    const results = await this._split([...operations], shopOfOperation, async (c, part) => (await c.operate(part)).results, operationFailure);
    return { results };
  }

  /**
   * Watches the hand-outs of `shopIds` (none: every shop) on every node that
   * owns some, merged into one object-mode Readable of Assignments (each node's
   * in its order). `ready` resolves once every node's watch is registered;
   * `cancel()` ends them all (the stream then emits 'error' CANCELLED, as a
   * single node's watch does); it ends when every node's stream has ended. A
   * node refusing a shop as WRONG_NODE has that shop's watch moved to the owner.
   */
  watchAssignments(shopIds = []) {
    const sources = new Set();
    let running = 0;
    let cancelled = false;
    const pauseAll = () => { for (const s of sources) s.pause(); };
    const merged = new Readable({
      objectMode: true,
      read() { for (const s of sources) s.resume(); },
      destroy(err, callback) {
        cancelled = true;
        for (const s of sources) s.cancel();
        callback(err);
      },
    });
    const fail = (err) => {
      if (cancelled) return;
      merged.destroy(err);
    };
    const finished = () => {
      running -= 1;
      if (running === 0 && !cancelled) merged.push(null);
    };
    const open = (groups, retry) => Promise.all([...groups].map(([address, shops]) => openOne(address, shops, retry)));
    const openOne = (address, shops, retry) => new Promise((resolve, reject) => {
      if (cancelled) { resolve(); return; }
      const source = this.client(address).watchAssignments(shops);
      source.address = address;
      sources.add(source);
      running += 1;
      source.on('metadata', () => resolve());
      source.on('data', (assignment) => { if (!merged.push(assignment)) pauseAll(); });
      source.on('end', () => { sources.delete(source); finished(); });
      source.on('error', (err) => {
        sources.delete(source);
        const wrong = cancelled ? null : wrongNodeOf(err);
        if (wrong && retry && shops.length > 0) { // a stale map: watch these shops on their owners (once)
          this._afterRefusal(shops.map((shop) => [shop, address, wrong]))
            .then((targets) => open(regroup(shops, targets), false))
            .then(() => { finished(); resolve(); }, (again) => { finished(); reject(again); fail(again); });
          return;
        }
        if (!cancelled) { reject(err); fail(err); }
        finished();
        resolve();
      });
    });
    merged.cancel = () => {
      if (cancelled) return;
      cancelled = true;
      for (const s of sources) s.cancel();
      merged.destroy(statusError(grpc.status.CANCELLED, 'Cancelled on client'));
    };
    Object.defineProperty(merged, 'sources', { get: () => [...sources] });
    merged.ready = (async () => {
      const ids = [...shopIds];
      const routes = ids.length > 0 ? (this.routes || await this.refresh()) : await this.refresh(); // every shop: every node of now
      const groups = ids.length > 0 ? routes.group(ids) : new Map(routes.addresses.map((address) => [address, []]));
      await open(groups, true);
      return merged;
    })();
    merged.ready.catch((err) => fail(err)); // reported on the stream too
    return merged;
  }

  // ---- dispatch.v1.Admin
  putShop(shop) { return this._onShop(shop && shop.shopId, (c) => c.putShop(shop)); }
  deleteShop(shopId) { return this._onShop(shopId, (c) => c.deleteShop(shopId)); }
  putAgent(agent) { return this._onShop(agent && agent.shopId, (c) => c.putAgent(agent)); }
  deleteAgent(shopId, agentId) { return this._onShop(shopId, (c) => c.deleteAgent(shopId, agentId)); }
  putGroup(group) { return this._onShop(group && group.shopId, (c) => c.putGroup(group)); }
  deleteGroup(shopId, groupId) { return this._onShop(shopId, (c) => c.deleteGroup(shopId, groupId)); }
  setExclusiveAgent(shopId, buyerId, agentId) { return this._onShop(shopId, (c) => c.setExclusiveAgent(shopId, buyerId, agentId)); }
  deleteExclusiveAgent(shopId, buyerId) { return this._onShop(shopId, (c) => c.deleteExclusiveAgent(shopId, buyerId)); }
  getShopState(shopId) { return this._onShop(shopId, (c) => c.getShopState(shopId)); }
  getConversation(shopId, conversationId) { return this._onShop(shopId, (c) => c.getConversation(shopId, conversationId)); }
  getBuyer(shopId, buyerId) { return this._onShop(shopId, (c) => c.getBuyer(shopId, buyerId)); }

  /** Every shop of every node, sorted. */
  async listShops() {
    const routes = this.routes || await this.refresh();
    const answers = await Promise.all(routes.addresses.map((address) => this.client(address).listShops()));
    return [...new Set(answers.flat())].sort();
  }
}

module.exports = {
  ClusterClient, Routes, crc32, crc32Table, partitionOf, wrongNodeOf, decodeStatus, WRONG_NODE, ERROR_DOMAIN,
};
