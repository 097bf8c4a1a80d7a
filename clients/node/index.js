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
 *
 * Automatic batching (issue 13, on by default): `dispatch`, `setPresence`,
 * `reportConversation` and `claimFromPool` go on one shared OperateStream; the
 * calls made in the same event-loop turn travel as one OperateRequest (like
 * ioredis `enableAutoPipelining`). Each call still resolves with its own answer
 * or rejects with its own grpc-js-like error. `{ autoBatch: false }`: unary RPCs.
 */
const path = require('node:path');
const { Readable } = require('node:stream');
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

/** Load the dispatch.v1 package: { Dispatch, Admin, Cluster, ...message types }. */
function loadPackage(protosDir = PROTOS_DIR) {
  const definition = protoLoader.loadSync(
    ['dispatch/v1/dispatch.proto', 'dispatch/v1/admin.proto', 'dispatch/v1/cluster.proto'],
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

/** Most operations in one OperateRequest (the server refuses more). */
const MAX_BATCH = 4096;

const OPERATE = pb.Dispatch.service.Operate;
const OPERATE_STREAM = pb.Dispatch.service.OperateStream;
const UNARY_METHOD = Object.freeze({
  dispatch: 'dispatch', setPresence: 'setPresence', reportConversation: 'reportConversation', claimFromPool: 'claimFromPool',
});
const UNARY_SERIALIZE = Object.freeze({
  dispatch: pb.Dispatch.service.Dispatch.requestSerialize,
  setPresence: pb.Dispatch.service.SetPresence.requestSerialize,
  reportConversation: pb.Dispatch.service.ReportConversation.requestSerialize,
  claimFromPool: pb.Dispatch.service.ClaimFromPool.requestSerialize,
});

/**
 * A stream that ended with one of these statuses was refused by the server as
 * a whole (credentials, scope, limits, a malformed batch): its calls reject
 * with that status. Any other end with calls in flight (connection lost,
 * server gone, CANCELLED, INTERNAL, an OK end with answers missing) is a
 * broken stream: its calls reject with UNAVAILABLE.
 */
const STREAM_VERDICTS = new Set([
  grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND, grpc.status.PERMISSION_DENIED,
  grpc.status.RESOURCE_EXHAUSTED, grpc.status.FAILED_PRECONDITION, grpc.status.OUT_OF_RANGE,
  grpc.status.UNIMPLEMENTED, grpc.status.UNAUTHENTICATED,
]);

/** An Error shaped like grpc-js's ServiceError: message "<code> <NAME>: <details>", .code, .details, .metadata. */
function statusError(code, details, metadata = new grpc.Metadata()) {
  return Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata });
}

function identity(bytes) { return bytes; }

/**
 * One operation as the bytes of a one-operation OperateRequest. Repeated
 * fields concatenate, so a batch is the concatenation of its operations'
 * bytes, and a request that cannot be serialized fails alone (INTERNAL
 * "Request message serialization failure", as grpc-js answers a unary call).
 */
function serializeOperation(kind, request) {
  try {
    if (request === null || typeof request !== 'object') UNARY_SERIALIZE[kind](request); // throws as unary would
    return OPERATE.requestSerialize({ operations: [{ [kind]: request }] });
  } catch (e) {
    throw statusError(grpc.status.INTERNAL, `Request message serialization failure: ${e && e.message ? e.message : e}`);
  }
}

/**
 * The automatic batcher of a DispatchClient: a queue of operations not yet
 * sent, one OperateStream at a time, and on it a FIFO of batches sent and not
 * yet answered (the server answers each request batch with one response
 * batch, in order).
 */
class AutoBatcher {
  constructor(client, { maxBatch, maxDelayMs, maxInFlight, idleMs, timeoutMs }) {
    this.client = client;
    this.maxBatch = maxBatch;
    this.maxDelayMs = maxDelayMs;
    this.maxInFlight = maxInFlight;
    this.idleMs = idleMs;
    this.timeoutMs = timeoutMs;
    this.enabled = true;
    this.fallbackChain = null; // the unary re-sends after an UNIMPLEMENTED OperateStream, one after another
    this.closed = false;
    this.queue = [];        // operations not yet sent, oldest first, from index `head`
    this.head = 0;
    this.inFlight = 0;      // operations sent and not yet answered (or failed), on any stream
    this.stream = null;     // the current OperateStream: { call, batches, answered, ended }
    this.scheduled = null;  // the pending flush (setImmediate or setTimeout)
    this.scheduledIsTimeout = false;
    this.queueTimer = null; // the deadline of the queue's head, while the queue waits for room
    this.idleTimer = null;
    this.lastActive = 0;
    /** Counters for tests and monitoring: batches and operations sent, streams opened. */
    this.stats = { batches: 0, operations: 0, streams: 0, largestBatch: 0, mostInFlight: 0 };
    this.flushNow = () => this.flush();
  }

  get queued() { return this.queue.length - this.head; }

  submit(kind, request) {
    let bytes;
    try {
      bytes = serializeOperation(kind, request);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      const deadline = this.timeoutMs ? Date.now() + this.timeoutMs : Infinity;
      this.queue.push({ kind, request, bytes, resolve, reject, done: false, deadline });
      if (this.queued >= this.maxBatch && this.inFlight < this.maxInFlight) this.flush(); // a full batch leaves now
      else if (this.scheduled === null && this.queueTimer === null) this.schedule(); // (a waiting queue moves on answers)
    });
  }

  schedule() {
    if (this.maxDelayMs > 0) {
      this.scheduled = setTimeout(this.flushNow, this.maxDelayMs);
      this.scheduledIsTimeout = true;
    } else {
      this.scheduled = setImmediate(this.flushNow);
      this.scheduledIsTimeout = false;
    }
  }

  unschedule() {
    if (this.scheduled === null) return;
    if (this.scheduledIsTimeout) clearTimeout(this.scheduled);
    else clearImmediate(this.scheduled);
    this.scheduled = null;
  }

  /** Up to `room` live operations from the head of the queue; expired ones reject DEADLINE_EXCEEDED. */
  take(room, now) {
    const ops = [];
    const queue = this.queue;
    while (ops.length < room && this.head < queue.length) {
      const op = queue[this.head];
      queue[this.head++] = undefined;
      if (op.done) continue;
      if (op.deadline <= now) {
        op.done = true;
        op.reject(statusError(grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded before the call was sent'));
        continue;
      }
      ops.push(op);
    }
    if (this.head === queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 4096 && this.head * 2 > queue.length) {
      this.queue = queue.slice(this.head);
      this.head = 0;
    }
    return ops;
  }

  /** Send what is queued, in batches of at most maxBatch, while the operations in flight stay within maxInFlight. */
  flush() {
    this.unschedule();
    if (!this.enabled) return this.drainToUnary();
    const now = Date.now();
    while (this.queued > 0 && this.inFlight < this.maxInFlight) {
      const ops = this.take(Math.min(this.maxBatch, this.maxInFlight - this.inFlight), now);
      if (ops.length === 0) break;
      let stream;
      try {
        stream = this.stream || this.open();
      } catch (err) { // e.g. the channel was closed
        for (const op of ops) { op.done = true; op.reject(err); }
        continue;
      }
      const batch = { ops, timer: null, stream };
      stream.batches.push(batch);
      this.inFlight += ops.length;
      const stats = this.stats;
      stats.batches += 1;
      stats.operations += ops.length;
      if (ops.length > stats.largestBatch) stats.largestBatch = ops.length;
      if (this.inFlight > stats.mostInFlight) stats.mostInFlight = this.inFlight;
      stream.call.write(ops.length === 1 ? ops[0].bytes : Buffer.concat(ops.map((op) => op.bytes)));
      if (this.timeoutMs) this.armBatchDeadline(batch, ops[ops.length - 1].deadline - now);
    }
    this.armQueueDeadline();
    if (this.closed && this.queued === 0 && this.stream && this.inFlight === 0) this.endStream();
    return undefined;
  }

  open() {
    const call = this.client.dispatchStub.makeBidiStreamRequest(
      OPERATE_STREAM.path, identity, OPERATE_STREAM.responseDeserialize, new grpc.Metadata(), {},
    );
    const stream = { call, batches: [], answered: 0, ended: false };
    call.on('data', (response) => this.onAnswer(stream, response));
    call.on('error', (err) => this.onEnd(stream, err));
    call.on('end', () => this.onEnd(stream, null));
    this.stream = stream;
    this.stats.streams += 1;
    this.armIdle();
    return stream;
  }

  /**
   * Operations of the batch still unanswered at their deadline reject
   * DEADLINE_EXCEEDED. A stream that leaves a whole batch unanswered that long
   * is taken for broken: it is cancelled (what else it carried rejects
   * UNAVAILABLE) and the next call opens a new one.
   */
  armBatchDeadline(batch, delay) {
    batch.timer = setTimeout(() => {
      batch.timer = null;
      const now = Date.now();
      let next = Infinity;
      for (const op of batch.ops) {
        if (op.done) continue;
        if (op.deadline <= now) {
          op.done = true;
          op.reject(statusError(grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded waiting for the answer'));
        } else if (op.deadline < next) next = op.deadline;
      }
      if (next !== Infinity) this.armBatchDeadline(batch, next - now);
      else if (!batch.stream.ended) {
        this.fail(batch.stream, statusError(grpc.status.DEADLINE_EXCEEDED, 'a batch was not answered within the deadline'));
      }
    }, Math.max(0, delay));
    batch.timer.unref();
  }

  /** While the queue waits for room in flight, its head still times out. */
  armQueueDeadline() {
    if (this.queueTimer !== null) { clearTimeout(this.queueTimer); this.queueTimer = null; }
    if (!this.timeoutMs || this.queued === 0 || this.scheduled !== null) return;
    let op = null;
    for (let i = this.head; i < this.queue.length; i++) if (!this.queue[i].done) { op = this.queue[i]; break; }
    if (op === null) return;
    this.queueTimer = setTimeout(() => {
      this.queueTimer = null;
      const now = Date.now();
      for (let i = this.head; i < this.queue.length; i++) {
        const waiting = this.queue[i];
        if (waiting.done) continue;
        if (waiting.deadline > now) break; // deadlines grow along the queue
        waiting.done = true;
        waiting.reject(statusError(grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded before the call was sent'));
      }
      this.armQueueDeadline();
    }, Math.max(0, op.deadline - Date.now()));
    this.queueTimer.unref();
  }

  onAnswer(stream, response) {
    if (stream.ended) return;
    const batch = stream.batches.shift();
    if (batch === undefined) {
      this.fail(stream, statusError(grpc.status.INTERNAL, 'OperateStream: an answer to no request batch'));
      return;
    }
    stream.answered += 1;
    this.settle(batch, response.results || []);
    this.lastActive = Date.now();
    if (this.queued > 0) this.flush();
    else if (this.closed && this.inFlight === 0) this.endStream();
  }

  settle(batch, results) {
    if (batch.timer !== null) { clearTimeout(batch.timer); batch.timer = null; }
    const ops = batch.ops;
    this.inFlight -= ops.length;
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i];
      if (op.done) continue;
      op.done = true;
      const result = results[i];
      if (result === undefined) {
        op.reject(statusError(grpc.status.INTERNAL, `OperateStream: ${results.length} results for ${ops.length} operations`));
      } else if (result.error && result.error.code) {
        // `status`: the operation's google.rpc.Status, details included (e.g. a cluster's WRONG_NODE).
        op.reject(Object.assign(statusError(result.error.code, result.error.message), { status: result.error }));
      } else if (result.kind !== op.kind) {
        op.reject(statusError(grpc.status.INTERNAL, `OperateStream: a ${result.kind} result for a ${op.kind} operation`));
      } else {
        op.resolve(result[op.kind]);
      }
    }
  }

  fail(stream, err) {
    this.onEnd(stream, err);
    stream.call.cancel();
  }

  /** Break the current stream on purpose: its calls in flight reject UNAVAILABLE; the next call opens a new one. */
  reset() {
    if (this.stream) this.fail(this.stream, statusError(grpc.status.UNAVAILABLE, 'the stream was reset by the client'));
  }

  /** The stream ended: what it still owed rejects (UNAVAILABLE when it broke); the next flush opens a new one. */
  onEnd(stream, err) {
    if (stream.ended) return;
    stream.ended = true;
    if (this.stream === stream) this.stream = null;
    const batches = stream.batches.splice(0);
    if (batches.length > 0) {
      const code = err ? err.code : grpc.status.OK;
      if (code === grpc.status.UNIMPLEMENTED && stream.answered === 0) {
        // A server without OperateStream applied nothing: fall back to the unary RPCs for good.
        this.enabled = false;
        for (const batch of batches) {
          if (batch.timer !== null) clearTimeout(batch.timer);
          this.inFlight -= batch.ops.length;
          for (const op of batch.ops) if (!op.done) this.unary(op);
        }
      } else {
        let failure;
        if (err && STREAM_VERDICTS.has(code)) {
          failure = () => statusError(code, err.details, err.metadata);
        } else {
          const why = err ? `${code} ${grpc.status[code]}: ${err.details}` : 'the server ended the stream without answering';
          failure = () => Object.assign(
            statusError(grpc.status.UNAVAILABLE, `OperateStream broke with the call in flight; its outcome is unknown (${why})`),
            { cause: err || undefined },
          );
        }
        for (const batch of batches) {
          if (batch.timer !== null) clearTimeout(batch.timer);
          this.inFlight -= batch.ops.length;
          for (const op of batch.ops) if (!op.done) { op.done = true; op.reject(failure()); }
        }
      }
    }
    if (this.queued > 0 && this.scheduled === null) this.flush();
  }

  /** Re-send an operation as its unary RPC, after the ones re-sent before it (so their order holds). */
  unary(op) {
    op.done = true;
    const send = () => unary(this.client.dispatchStub, UNARY_METHOD[op.kind], op.request, this.client._options());
    const sent = (this.fallbackChain || Promise.resolve()).then(send);
    sent.then(op.resolve, op.reject);
    this.fallbackChain = sent.then(() => {}, () => {});
  }

  drainToUnary() {
    if (this.queueTimer !== null) { clearTimeout(this.queueTimer); this.queueTimer = null; }
    while (this.head < this.queue.length) {
      const op = this.queue[this.head];
      this.queue[this.head++] = undefined;
      if (!op.done) this.unary(op);
    }
    this.queue = [];
    this.head = 0;
  }

  /** End the stream once nothing has been in flight for idleMs, so an idle client does not hold the process open. */
  armIdle() {
    if (this.idleTimer !== null || !Number.isFinite(this.idleMs)) return;
    this.lastActive = Date.now();
    const check = () => {
      this.idleTimer = null;
      const stream = this.stream;
      if (stream === null) return;
      const idleFor = Date.now() - this.lastActive;
      if (this.inFlight === 0 && this.queued === 0 && idleFor >= this.idleMs) {
        this.endStream();
        return;
      }
      this.idleTimer = setTimeout(check, Math.max(1, this.idleMs - idleFor));
      this.idleTimer.unref();
    };
    this.idleTimer = setTimeout(check, this.idleMs);
    this.idleTimer.unref();
  }

  /** Half-close the current stream (nothing is in flight on it): the server ends it with OK. */
  endStream() {
    const stream = this.stream;
    if (stream === null) return;
    this.stream = null;
    if (this.idleTimer !== null) { clearTimeout(this.idleTimer); this.idleTimer = null; }
    stream.call.end();
  }

  /** Send what is queued now; end the stream once everything is answered. */
  close() {
    this.closed = true;
    this.flush();
  }
}

/** A stream answered batch for batch, in order, as { call, send(items) -> Promise, end() }. */
function batchStream(name, call, wrap, unwrap) {
  const waiting = [];
  let failure = null;
  call.on('data', (batch) => { const w = waiting.shift(); if (w) w.resolve(unwrap(batch)); });
  call.on('error', (err) => { failure = err; for (const w of waiting.splice(0)) w.reject(err); });
  call.on('end', () => {
    const err = failure || new Error(`${name} ended`);
    for (const w of waiting.splice(0)) w.reject(err);
  });
  return {
    call,
    send(items) {
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => {
        waiting.push({ resolve, reject });
        call.write(wrap(items));
      });
    },
    end() { call.end(); },
  };
}

/**
 * Promise-based client of both services over one channel.
 *
 * Options:
 * - `timeoutMs` (default 30 s): the deadline of each call (batched calls too,
 *   counted from the call).
 * - `autoBatch` (default true): `dispatch`, `setPresence`, `reportConversation`
 *   and `claimFromPool` share one OperateStream, and the calls made in the same
 *   event-loop turn go as one batch. false: each is its own unary RPC.
 * - `maxBatch` (default 1024, at most 4096): most operations in one batch; a
 *   full batch is sent at once.
 * - `maxDelayMs` (default 0): 0 sends the batch as soon as the current turn of
 *   the event loop is done (setImmediate), so a lone call waits for nothing;
 *   more waits up to that long to gather a bigger batch.
 * - `maxInFlight` (default 8192, at least maxBatch): most operations sent and
 *   not yet answered; later calls wait in the queue until answers come.
 * - `idleMs` (default 1000): the stream is half-closed after this long with
 *   nothing in flight (the next call opens a new one), so an idle client does
 *   not keep the process alive; Infinity keeps it open until `close()`.
 */
class DispatchClient {
  constructor(target, {
    credentials = grpc.credentials.createInsecure(), timeoutMs = 30000, channelOptions = {},
    autoBatch = true, maxBatch = 1024, maxDelayMs = 0, maxInFlight = 8192, idleMs = 1000,
  } = {}) {
    if (!Number.isInteger(maxBatch) || maxBatch < 1 || maxBatch > MAX_BATCH) {
      throw new RangeError(`maxBatch must be an integer from 1 to ${MAX_BATCH}, not ${maxBatch}`);
    }
    if (typeof maxDelayMs !== 'number' || !(maxDelayMs >= 0)) throw new RangeError(`maxDelayMs must be >= 0, not ${maxDelayMs}`);
    if (!Number.isInteger(maxInFlight) || maxInFlight < maxBatch) {
      throw new RangeError(`maxInFlight must be an integer >= maxBatch (${maxBatch}), not ${maxInFlight}`);
    }
    if (typeof idleMs !== 'number' || !(idleMs > 0)) throw new RangeError(`idleMs must be > 0, not ${idleMs}`);
    this.dispatchStub = new pb.Dispatch(target, credentials, channelOptions);
    this.adminStub = new pb.Admin(target, credentials, { ...channelOptions, channelOverride: this.dispatchStub.getChannel() });
    this.timeoutMs = timeoutMs;
    /** The automatic batcher, or null with `autoBatch: false`. */
    this.batcher = autoBatch ? new AutoBatcher(this, { maxBatch, maxDelayMs, maxInFlight, idleMs, timeoutMs }) : null;
  }

  /** Batches and operations sent on OperateStream, streams opened (zeros without autoBatch). */
  get batchStats() {
    return this.batcher ? { ...this.batcher.stats } : { batches: 0, operations: 0, streams: 0, largestBatch: 0, mostInFlight: 0 };
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

  /** Closes the channel; batched calls still queued are sent first. */
  close() {
    if (this.batcher) this.batcher.close();
    this.dispatchStub.close();
    this.adminStub.close();
  }

  /** A batched operation of `kind` (the Operation oneof member), or its unary RPC. */
  _op(kind, request) {
    const batcher = this.batcher;
    return batcher && batcher.enabled ? batcher.submit(kind, request) : this._d(UNARY_METHOD[kind], request);
  }

  // ---- dispatch.v1.Dispatch
  dispatch(request) { return this._op('dispatch', request); }
  async dispatchBatch(requests) { return (await this._d('dispatchBatch', { requests })).responses; }
  setPresence(request) { return this._op('setPresence', request); }
  reportConversation(request) { return this._op('reportConversation', request); }
  claimFromPool(request) { return this._op('claimFromPool', request); }

  /**
   * Operate (unary): applies `operations` (each `{ dispatch }`, `{ setPresence }`,
   * `{ reportConversation }` or `{ claimFromPool }`) in order; resolves with the
   * OperateResponse `{ results }`, one `{ kind, <kind>, error }` per operation.
   */
  operate(operations) { return this._d('operate', { operations }); }

  /**
   * DispatchStream: returns { send(requests) -> Promise<responses>, end() }.
   * Each sent batch is answered by one batch, in order.
   */
  dispatchStream() {
    return batchStream('DispatchStream', this.dispatchStub.dispatchStream(), (requests) => ({ requests }), (batch) => batch.responses);
  }

  /**
   * OperateStream, by hand: returns { send(operations) -> Promise<results>, end() }.
   * Each sent batch is answered by one batch of results, in order.
   */
  operateStream() {
    return batchStream('OperateStream', this.dispatchStub.operateStream(), (operations) => ({ operations }), (batch) => batch.results);
  }

  /**
   * Watches the hand-outs of some shops (none: every shop). The returned
   * object-mode Readable emits 'data' Assignments, one at a time and in order,
   * read from WatchAssignmentBatches (the server puts the hand-outs that are
   * ready into one message). `ready` resolves once the subscription is
   * registered (every hand-out after it is delivered); `cancel()` ends it, and
   * the stream then emits 'error' with code CANCELLED, like a gRPC call.
   * 'metadata' and 'status' are passed on from the call (`watch.call`).
   */
  watchAssignments(shopIds = []) {
    const call = this.dispatchStub.watchAssignmentBatches({ shopIds });
    const watch = new Readable({
      objectMode: true,
      read() { call.resume(); },
      destroy(err, callback) { call.cancel(); callback(err); },
    });
    call.on('data', (batch) => {
      let more = true;
      for (const assignment of batch.assignments) more = watch.push(assignment);
      if (!more) call.pause(); // the reader is behind: let gRPC flow control hold the server
    });
    call.on('end', () => watch.push(null));
    call.on('error', (err) => watch.destroy(err));
    call.on('metadata', (metadata) => watch.emit('metadata', metadata));
    call.on('status', (status) => watch.emit('status', status));
    watch.call = call;
    watch.cancel = () => call.cancel();
    watch.ready = new Promise((resolve, reject) => {
      call.once('metadata', resolve);
      call.once('error', reject);
    });
    watch.ready.catch(() => {}); // an error is also reported on the stream
    return watch;
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

module.exports = {
  DispatchClient, loadPackage, pb, grpc, status: grpc.status, timestamp, timestampMs, statusError, PROTOS_DIR, MAX_BATCH,
};

// The cluster client (issue 15: ClusterClient, partitionOf, wrongNodeOf...): cluster.js requires this module.
Object.assign(module.exports, require('./cluster'));
