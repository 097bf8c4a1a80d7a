'use strict';
// Automatic batching (issue 13) against the real server: the calls of one
// event-loop turn go as one OperateStream batch, each call gets the answer (or
// the error) its unary RPC would give, order is kept, and a broken stream
// fails what was in flight with UNAVAILABLE before the client reconnects.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { DispatchClient, status, timestamp } = require('..');
const { startServer } = require('../testing/server');

const T0 = 1_700_000_000_000;
const tick = () => new Promise((resolve) => setImmediate(resolve));

let server;
let port;
let admin;     // autoBatch: false (Admin calls and the unary reference)
let batched;   // the default client: autoBatch on
const clients = [];

function newClient(options = {}) {
  const client = new DispatchClient(`127.0.0.1:${port}`, { timeoutMs: 10000, ...options });
  clients.push(client);
  return client;
}

/** A shop with agents a1, a2 (capacity 1, in group g bound to NO_ORDER); offline conversations wait in the pool. */
async function makeShop(shopId) {
  await admin.putShop({ shopId, mainAccount: shopId, strategy: 'STRATEGY_FEWEST_UNREAD', tieSeed: '7', offlineRule: 'OFFLINE_RULE_MESSAGE_POOL' });
  for (const [agentId, seconds] of [['a1', 1], ['a2', 2]]) {
    await admin.putAgent({ shopId, agentId, maxCapacity: 1, createdAt: { seconds, nanos: 0 } });
  }
  await admin.putGroup({ shopId, groupId: 'g', members: ['a1', 'a2'], orderStates: ['ORDER_STATE_NO_ORDER'] });
}

/** Settle a call as a comparable value: its answer, or its error's code, details and message. */
function outcome(promise) {
  return promise.then(
    (value) => ({ ok: value }),
    (err) => ({ code: err.code, details: err.details, message: err.message }),
  );
}

/** Replace a shop id by a placeholder (in fields and messages), so answers of two twin shops compare equal. */
function anonymise(value, shopId) {
  return JSON.parse(JSON.stringify(value).replace(new RegExp(`\\b${shopId}\\b`, 'g'), '<shop>'));
}

/**
 * A script touching every operation kind and the usual errors, in the order it
 * must be applied. Each step is [method, request].
 */
function script(shopId) {
  let ms = 0;
  const at = () => timestamp(T0 + (ms += 10));
  const conv = (c, event, extra = {}) => ['reportConversation', { shopId, conversationId: c, event, at: at(), ...extra }];
  const order = 'ORDER_STATE_NO_ORDER';
  return [
    ['dispatch', { shopId, buyerId: 'b0', conversationId: 'p0', orderState: order, at: at() }],       // nobody online: pool
    ['setPresence', { shopId, agentId: 'a1', presence: 'PRESENCE_ONLINE', at: at() }],
    ['setPresence', { shopId, agentId: 'a2', presence: 'PRESENCE_UNSPECIFIED', at: at() }],          // INVALID_ARGUMENT
    ['claimFromPool', { shopId, agentId: 'a1', at: at() }],                                          // takes p0
    ['claimFromPool', { shopId, agentId: 'a1', at: at() }],                                          // FAILED_PRECONDITION: empty
    ['setPresence', { shopId, agentId: 'a2', presence: 'PRESENCE_ONLINE', at: at() }],
    ['dispatch', { shopId, buyerId: 'b1', conversationId: 'c1', orderState: order, at: at(), trace: true }],
    ['dispatch', { shopId: 'ghost', buyerId: 'b9', conversationId: 'x', at: at() }],                 // NOT_FOUND
    ['dispatch', { shopId, buyerId: 'b7', conversationId: 'c1', orderState: order, at: at() }],      // ALREADY_EXISTS (another buyer)
    ['dispatch', { shopId, buyerId: 'b2', conversationId: 'c2', orderState: order, at: at() }],      // queued: a1 and a2 full
    conv('c1', 'CONVERSATION_EVENT_BUYER_MESSAGE'),
    conv('c1', 'CONVERSATION_EVENT_AGENT_REPLY', { agentId: 'a2' }),
    conv('nope', 'CONVERSATION_EVENT_BUYER_MESSAGE'),                                                // NOT_FOUND
    conv('c1', 'CONVERSATION_EVENT_UNSPECIFIED'),                                                    // INVALID_ARGUMENT
    conv('p0', 'CONVERSATION_EVENT_CLOSED'),                                                         // c2 goes to a1
    conv('c2', 'CONVERSATION_EVENT_TRANSFERRED', { toAgentId: 'a2' }),
    ['dispatch', { shopId, type: 'CONVERSATION_TYPE_SHOP_TO_SHOP', buyerId: 'b3', conversationId: 'd1', toAccount: 'a1', at: at() }],
  ];
}

before(async () => {
  server = startServer();
  port = await server.port;
  admin = newClient({ autoBatch: false });
  batched = newClient();
  await admin.waitForReady();
});

after(async () => {
  for (const client of clients) client.close();
  if (server) assert.equal(await server.stop(), 0, server.log());
});

test('each batched call answers or fails exactly as its unary RPC', async () => {
  await makeShop('unary');
  await makeShop('batch');

  const unary = [];
  for (const [method, request] of script('unary')) unary.push(await outcome(admin[method](request)));

  const before = batched.batchStats;
  const calls = script('batch').map(([method, request]) => outcome(batched[method](request))); // one turn
  const answers = await Promise.all(calls);
  const after = batched.batchStats;
  assert.equal(after.batches - before.batches, 1, 'the calls of one turn go as one batch');
  assert.equal(after.operations - before.operations, calls.length);

  assert.deepEqual(anonymise(answers, 'batch'), anonymise(unary, 'unary'));
  // The script does what it says: a mix of answers and every expected error, in place.
  assert.deepEqual(answers.map((a) => a.code ?? 'ok'), [
    'ok', 'ok', status.INVALID_ARGUMENT, 'ok', status.FAILED_PRECONDITION, 'ok', 'ok', status.NOT_FOUND,
    status.ALREADY_EXISTS, 'ok', 'ok', 'ok', status.NOT_FOUND, status.INVALID_ARGUMENT, 'ok', 'ok', 'ok',
  ]);
  assert.equal(answers[0].ok.reason, 'REASON_OFFLINE_MESSAGE_POOL');
  assert.deepEqual(answers[3].ok, { conversationId: 'p0', buyerId: 'b0', agentId: 'a1' });
  assert.equal(answers[6].ok.agentId, 'a2');
  assert.ok(answers[6].ok.trace.length > 0);
  assert.match(answers[7].details, /ghost/);
  assert.match(answers[7].message, /^5 NOT_FOUND: /);
  assert.equal(answers[9].ok.reason, 'REASON_QUEUED');
  assert.deepEqual(answers[14].ok.assignments.map((a) => [a.conversationId, a.agentId]), [['c2', 'a1']]);
  assert.equal(answers[16].ok.reason, 'REASON_DIRECT');
});

test('the low-level operate() answers one result per operation', async () => {
  await makeShop('op');
  const { results } = await batched.operate([
    { setPresence: { shopId: 'op', agentId: 'a1', presence: 'PRESENCE_ONLINE' } },
    { dispatch: { shopId: 'op', buyerId: 'b', conversationId: 'c', orderState: 'ORDER_STATE_NO_ORDER' } },
    { claimFromPool: { shopId: 'op', agentId: 'a1' } },
    { reportConversation: { shopId: 'op', conversationId: 'c', event: 'CONVERSATION_EVENT_CLOSED' } },
  ]);
  assert.deepEqual(results.map((r) => r.kind ?? r.error.code), ['setPresence', 'dispatch', status.FAILED_PRECONDITION, 'reportConversation']);
  assert.equal(results[1].dispatch.agentId, 'a1');
  assert.equal(results[1].error, null);
});

test('a lone call is sent as soon as the turn ends; maxDelayMs waits to gather', async () => {
  await makeShop('lone');
  const before = batched.batchStats.batches;
  const answer = batched.setPresence({ shopId: 'lone', agentId: 'a1', presence: 'PRESENCE_ONLINE' });
  assert.equal(batched.batchStats.batches, before, 'not sent synchronously');
  await tick();
  assert.equal(batched.batchStats.batches, before + 1, 'sent on the next turn, no timer');
  assert.deepEqual(await answer, { assignments: [] });

  const slow = newClient({ maxDelayMs: 40 });
  const first = slow.setPresence({ shopId: 'lone', agentId: 'a2', presence: 'PRESENCE_ONLINE' });
  await tick();
  const second = slow.setPresence({ shopId: 'lone', agentId: 'a2', presence: 'PRESENCE_ONLINE' });
  assert.equal(slow.batchStats.batches, 0, 'waiting up to maxDelayMs');
  await Promise.all([first, second]);
  assert.deepEqual(slow.batchStats, { batches: 1, operations: 2, streams: 1, largestBatch: 2, mostInFlight: 2 });
});

test('order within a shop holds across pipelined batches; in-flight operations are bounded', async () => {
  await makeShop('ord');
  for (const agentId of ['a1', 'a2']) {
    await admin.putAgent({ shopId: 'ord', agentId, maxCapacity: 1000, createdAt: { seconds: agentId === 'a1' ? 1 : 2, nanos: 0 } });
    await admin.setPresence({ shopId: 'ord', agentId, presence: 'PRESENCE_ONLINE' });
  }
  const client = newClient({ maxBatch: 3, maxInFlight: 6 });
  // Each conversation's events only succeed if applied after its dispatch, and
  // its id can only be dispatched again after its close.
  const calls = [];
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 20; i++) {
      const base = { shopId: 'ord', conversationId: `c${i}` };
      calls.push(client.dispatch({ ...base, buyerId: `b${i}`, orderState: 'ORDER_STATE_NO_ORDER' }));
      calls.push(client.reportConversation({ ...base, event: 'CONVERSATION_EVENT_BUYER_MESSAGE' }));
      calls.push(client.reportConversation({ ...base, event: 'CONVERSATION_EVENT_AGENT_REPLY' }));
      calls.push(client.reportConversation({ ...base, event: 'CONVERSATION_EVENT_CLOSED' }));
    }
  }
  // Full batches leave at once, as long as the bound allows: 2 batches of 3 in flight, the rest waits.
  assert.equal(client.batcher.inFlight, 6);
  assert.equal(client.batcher.queued, calls.length - 6);
  const answers = await Promise.all(calls);
  assert.equal(answers.length, 160);
  const reasons = new Set(answers.filter((_, i) => i % 4 === 0).map((a) => a.reason));
  assert.deepEqual([...reasons].sort(), ['REASON_AFFINITY', 'REASON_GROUP']); // round 2: the same buyers come back
  const stats = client.batchStats;
  assert.equal(stats.operations, 160);
  assert.equal(stats.largestBatch, 3);
  assert.equal(stats.mostInFlight, 6);
  assert.ok(stats.batches >= 160 / 3, JSON.stringify(stats));
  assert.equal(client.batcher.inFlight, 0);
  const state = await admin.getShopState('ord');
  assert.ok(state.agents.every((a) => Number(a.active ?? 0) === 0), JSON.stringify(state.agents));
});

test('reset() breaks the stream: the calls in flight reject UNAVAILABLE, the next call opens a new stream', async () => {
  await makeShop('rst');
  const client = newClient();
  await client.setPresence({ shopId: 'rst', agentId: 'a1', presence: 'PRESENCE_ONLINE' });
  const inFlight = [1, 2, 3].map(() => outcome(client.setPresence({ shopId: 'rst', agentId: 'a1', presence: 'PRESENCE_ONLINE' })));
  await tick(); // sent
  assert.equal(client.batcher.inFlight, 3);
  client.batcher.reset();
  for (const failed of await Promise.all(inFlight)) {
    assert.equal(failed.code, status.UNAVAILABLE);
    assert.match(failed.details, /outcome is unknown .*reset by the client/);
  }
  assert.deepEqual(await client.setPresence({ shopId: 'rst', agentId: 'a1', presence: 'PRESENCE_ONLINE' }), { assignments: [] });
  assert.equal(client.batchStats.streams, 2);
});

test('a bad request fails alone; options are checked', async () => {
  await makeShop('bad');
  const good = batched.setPresence({ shopId: 'bad', agentId: 'a1', presence: 'PRESENCE_ONLINE' });
  const bad = await outcome(batched.dispatch(null));
  // What grpc-js answers a unary call it cannot serialize (not sent here: such a call
  // lingers on the server until its shutdown grace).
  assert.deepEqual(bad, {
    code: status.INTERNAL,
    details: 'Request message serialization failure: .dispatch.v1.DispatchRequest: object expected',
    message: '13 INTERNAL: Request message serialization failure: .dispatch.v1.DispatchRequest: object expected',
  });
  assert.deepEqual(await good, { assignments: [] });

  assert.throws(() => new DispatchClient('127.0.0.1:1', { maxBatch: 4097 }), RangeError);
  assert.throws(() => new DispatchClient('127.0.0.1:1', { maxBatch: 0 }), RangeError);
  assert.throws(() => new DispatchClient('127.0.0.1:1', { maxBatch: 64, maxInFlight: 32 }), RangeError);
  assert.throws(() => new DispatchClient('127.0.0.1:1', { maxDelayMs: -1 }), RangeError);
});

test('a broken stream fails the calls in flight with UNAVAILABLE; the client reconnects', async () => {
  // A server of its own, killed while calls wait on it (SIGSTOP first, so they are surely in flight).
  const first = startServer();
  const ownPort = await first.port;
  const own = new DispatchClient(`127.0.0.1:${ownPort}`, { timeoutMs: 10000, autoBatch: false });
  const client = new DispatchClient(`127.0.0.1:${ownPort}`, { timeoutMs: 10000 });
  const hasty = new DispatchClient(`127.0.0.1:${ownPort}`, { timeoutMs: 300 });
  clients.push(own, client, hasty);
  let second;
  try {
    await own.putShop({ shopId: 's', mainAccount: 's' });
    await own.putAgent({ shopId: 's', agentId: 'a', maxCapacity: 100 });
    await client.setPresence({ shopId: 's', agentId: 'a', presence: 'PRESENCE_ONLINE' });
    await hasty.setPresence({ shopId: 's', agentId: 'a', presence: 'PRESENCE_ONLINE' });
    assert.equal(client.batchStats.streams, 1);

    first.child.kill('SIGSTOP');
    const inFlight = [];
    for (let i = 0; i < 5; i++) inFlight.push(outcome(client.dispatch({ shopId: 's', buyerId: `b${i}`, conversationId: `c${i}` })));
    const late = outcome(hasty.dispatch({ shopId: 's', buyerId: 'bh', conversationId: 'ch' }));
    await tick();
    assert.equal(client.batcher.inFlight, 5);
    // A call past its deadline rejects DEADLINE_EXCEEDED, though the server never answered,
    // and its stream, silent that long, is dropped.
    assert.equal((await late).code, status.DEADLINE_EXCEEDED);
    assert.equal(hasty.batcher.stream, null);
    assert.equal(await first.stop('SIGKILL'), 'SIGKILL');

    const failed = await Promise.all(inFlight);
    for (const f of failed) {
      assert.equal(f.code, status.UNAVAILABLE, JSON.stringify(f));
      assert.match(f.message, /^14 UNAVAILABLE: /);
    }
    assert.equal(client.batcher.inFlight, 0);

    // A new server on the same port: the next call opens a new stream and works.
    second = startServer({ port: ownPort });
    assert.equal(await second.port, ownPort);
    await own.putShop({ shopId: 's', mainAccount: 's' });
    await own.putAgent({ shopId: 's', agentId: 'a', maxCapacity: 100 });
    const [presence, answer] = await Promise.all([
      client.setPresence({ shopId: 's', agentId: 'a', presence: 'PRESENCE_ONLINE' }),
      client.dispatch({ shopId: 's', buyerId: 'b0', conversationId: 'c0' }),
    ]);
    assert.deepEqual(presence, { assignments: [] });
    assert.equal(answer.agentId, 'a');
    assert.equal(client.batchStats.streams, 2);
  } finally {
    for (const c of [own, client, hasty]) c.close(); // an open stream would hold the server's shutdown
    if (first.child.exitCode === null) await first.stop('SIGKILL');
    if (second) assert.equal(await second.stop(), 0, second.log());
  }
});

test('a server without OperateStream: the client falls back to the unary RPCs', async () => {
  // Not the real server (it has OperateStream): a grpc-js server implementing only Dispatch.
  const { grpc, pb } = require('..');
  const old = new grpc.Server();
  old.addService(pb.Dispatch.service, {
    dispatch(call, callback) {
      if (call.request.shopId !== 's') callback({ code: status.NOT_FOUND, details: `shop '${call.request.shopId}' not found` });
      else callback(null, { agentId: 'a', reason: 'REASON_GROUP', conversationId: call.request.conversationId });
    },
  });
  const oldPort = await new Promise((resolve, reject) => {
    old.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
  });
  const legacy = new DispatchClient(`127.0.0.1:${oldPort}`, { timeoutMs: 5000 });
  try {
    const answers = await Promise.all([
      outcome(legacy.dispatch({ shopId: 's', buyerId: 'b1', conversationId: 'c1' })),
      outcome(legacy.dispatch({ shopId: 'x', buyerId: 'b2', conversationId: 'c2' })),
    ]);
    assert.equal(answers[0].ok.conversationId, 'c1');
    assert.deepEqual(answers[1], { code: status.NOT_FOUND, details: "shop 'x' not found", message: "5 NOT_FOUND: shop 'x' not found" });
    assert.equal(legacy.batcher.enabled, false);
    assert.equal((await legacy.dispatch({ shopId: 's', buyerId: 'b3', conversationId: 'c3' })).agentId, 'a');
    assert.equal(legacy.batchStats.batches, 1);
  } finally {
    legacy.close();
    old.forceShutdown();
  }
});
