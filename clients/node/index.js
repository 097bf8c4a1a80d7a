'use strict';
/**
 * Node.js client of the dispatch.v1 gRPC API (services Dispatch and Admin).
 *
 * The stubs are generated at load time from the contract in ../../protos by
 * @grpc/proto-loader (no code generation step, no network beyond the npm
 * registry at install time); @grpc/grpc-js carries the calls. Field names are
 * camelCase (shopId, conversationId), enums are their names
 * ('REASON_GROUP'), 64-bit integers are strings and Timestamps are
 * {seconds, nanos} (see `timestamp`).
 *
 *   const { DispatchClient } = require('@dispatch/client');
 *   const client = new DispatchClient('127.0.0.1:50051');
 *   const answer = await client.dispatch({ shopId: 'demo', buyerId: 'b1', conversationId: 'c1',
 *                                          orderState: 'ORDER_STATE_NO_ORDER' });
 *   console.log(answer.reason, answer.agentId);   // REASON_GROUP demo:bob
 */
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/** Where the .proto files are: $DISPATCH_PROTOS, else the repository's protos/. */
const PROTOS_DIR = process.env.DISPATCH_PROTOS || path.resolve(__dirname, '..', '..', 'protos');

const LOADER_OPTIONS = Object.freeze({
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTOS_DIR],
});

/** Load the dispatch.v1 package: { Dispatch, Admin, ...message types }. */
function loadPackage(protosDir = PROTOS_DIR) {
  const definition = protoLoader.loadSync(
    ['dispatch/v1/dispatch.proto', 'dispatch/v1/admin.proto'],
    { ...LOADER_OPTIONS, includeDirs: [protosDir] },
  );
  return grpc.loadPackageDefinition(definition).dispatch.v1;
}

const pb = loadPackage();

/** A google.protobuf.Timestamp from milliseconds since the epoch (or a Date). */
function timestamp(ms) {
  const value = ms instanceof Date ? ms.getTime() : Number(ms);
  const seconds = Math.floor(value / 1000);
  return { seconds: String(seconds), nanos: Math.round((value - seconds * 1000) * 1e6) };
}

/** Milliseconds since the epoch of a Timestamp as the client receives it. */
function timestampMs(ts) {
  return ts ? Number(ts.seconds) * 1000 + Math.floor(Number(ts.nanos) / 1e6) : null;
}

function unary(stub, method, request, options) {
  return new Promise((resolve, reject) => {
    stub[method](request, new grpc.Metadata(), options, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

/**
 * Promise-based client of both services over one channel.
 * `options.timeoutMs` (default 30 s) is the deadline of each unary call.
 */
class DispatchClient {
  constructor(target, { credentials = grpc.credentials.createInsecure(), timeoutMs = 30000, channelOptions = {} } = {}) {
    this.dispatchStub = new pb.Dispatch(target, credentials, channelOptions);
    this.adminStub = new pb.Admin(target, credentials, { ...channelOptions, channelOverride: this.dispatchStub.getChannel() });
    this.timeoutMs = timeoutMs;
  }

  _options() {
    return this.timeoutMs ? { deadline: new Date(Date.now() + this.timeoutMs) } : {};
  }

  _d(method, request) { return unary(this.dispatchStub, method, request, this._options()); }
  _a(method, request) { return unary(this.adminStub, method, request, this._options()); }

  /** Resolves once the channel is connected (rejects after `timeoutMs`). */
  waitForReady(timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      this.dispatchStub.waitForReady(new Date(Date.now() + timeoutMs), (err) => (err ? reject(err) : resolve()));
    });
  }

  close() {
    this.dispatchStub.close();
    this.adminStub.close();
  }

  // ---- dispatch.v1.Dispatch
  dispatch(request) { return this._d('dispatch', request); }
  async dispatchBatch(requests) { return (await this._d('dispatchBatch', { requests })).responses; }
  setPresence(request) { return this._d('setPresence', request); }
  reportConversation(request) { return this._d('reportConversation', request); }
  claimFromPool(request) { return this._d('claimFromPool', request); }

  /**
   * DispatchStream: returns { send(requests) -> Promise<responses>, end() }.
   * Each sent batch is answered by one batch, in order.
   */
  dispatchStream() {
    const call = this.dispatchStub.dispatchStream();
    const waiting = [];
    let failure = null;
    call.on('data', (batch) => { const w = waiting.shift(); if (w) w.resolve(batch.responses); });
    call.on('error', (err) => { failure = err; for (const w of waiting.splice(0)) w.reject(err); });
    call.on('end', () => {
      const err = failure || new Error('DispatchStream ended');
      for (const w of waiting.splice(0)) w.reject(err);
    });
    return {
      call,
      send(requests) {
        if (failure) return Promise.reject(failure);
        return new Promise((resolve, reject) => {
          waiting.push({ resolve, reject });
          call.write({ requests });
        });
      },
      end() { call.end(); },
    };
  }

  /**
   * WatchAssignments for some shops (none: every shop). The returned stream
   * emits 'data' Assignments; `ready` resolves once the subscription is
   * registered (every hand-out after it is delivered).
   */
  watchAssignments(shopIds = []) {
    const call = this.dispatchStub.watchAssignments({ shopIds });
    call.ready = new Promise((resolve, reject) => {
      call.once('metadata', resolve);
      call.once('error', reject);
    });
    call.ready.catch(() => {}); // an error is also reported on the stream
    return call;
  }

  // ---- dispatch.v1.Admin
  async putShop(shop) { return (await this._a('putShop', { shop })).shop; }
  deleteShop(shopId) { return this._a('deleteShop', { shopId }); }
  putAgent(agent) { return this._a('putAgent', { agent }); }
  deleteAgent(shopId, agentId) { return this._a('deleteAgent', { shopId, agentId }); }
  putGroup(group) { return this._a('putGroup', { group }); }
  deleteGroup(shopId, groupId) { return this._a('deleteGroup', { shopId, groupId }); }
  setExclusiveAgent(shopId, buyerId, agentId) { return this._a('setExclusiveAgent', { shopId, buyerId, agentId }); }
  deleteExclusiveAgent(shopId, buyerId) { return this._a('deleteExclusiveAgent', { shopId, buyerId }); }
  getShopState(shopId) { return this._a('getShopState', { shopId }); }
  async listShops() { return (await this._a('listShops', {})).shopIds; }
  getConversation(shopId, conversationId) { return this._a('getConversation', { shopId, conversationId }); }
  getBuyer(shopId, buyerId) { return this._a('getBuyer', { shopId, buyerId }); }
}

module.exports = { DispatchClient, loadPackage, pb, grpc, status: grpc.status, timestamp, timestampMs, PROTOS_DIR };
