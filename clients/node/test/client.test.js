'use strict';
// The Node.js client against the real server: `python -m dispatcher serve --port 0`
// in a child process (the port is read from its `server.started` log line).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { DispatchClient, status, timestamp, timestampMs } = require('..');
const { startServer } = require('../testing/server');

const T0 = 1_700_000_000_000;
const at = timestamp(T0);

let server;
let client;

before(async () => {
  server = startServer();
  const port = await server.port;
  client = new DispatchClient(`127.0.0.1:${port}`, { timeoutMs: 10000 });
  await client.waitForReady();

  // A shop configured through Admin: two agents of capacity 1 in a group bound to NO_ORDER.
  const shop = await client.putShop({ shopId: 'n', mainAccount: 'n', strategy: 'STRATEGY_FEWEST_UNREAD', tieSeed: '7' });
  assert.equal(shop.strategy, 'STRATEGY_FEWEST_UNREAD');
  assert.equal(shop.offlineRule, 'OFFLINE_RULE_MAIN_ACCOUNT'); // defaults spelled out
  assert.equal(shop.stagingFirstCap, 100);
  for (const [agentId, seconds] of [['n:a', 1], ['n:b', 2]]) {
    await client.putAgent({ shopId: 'n', agentId, maxCapacity: 1, createdAt: { seconds, nanos: 0 } });
    await client.setPresence({ shopId: 'n', agentId, presence: 'PRESENCE_ONLINE', at });
  }
  await client.putGroup({ shopId: 'n', groupId: 'pre', members: ['n:a', 'n:b'], orderStates: ['ORDER_STATE_NO_ORDER'] });
});

after(async () => {
  if (client) client.close();
  if (server) assert.equal(await server.stop(), 0, server.log());
});

test('Admin answers what was configured', async () => {
  assert.deepEqual(await client.listShops(), ['n']);
  const state = await client.getShopState('n');
  assert.deepEqual(state.agents.map((a) => [a.agentId, a.presence]), [
    ['n', 'PRESENCE_OFFLINE'],
    ['n:a', 'PRESENCE_ONLINE'],
    ['n:b', 'PRESENCE_ONLINE'],
  ]);
  assert.deepEqual(state.groups, [{ groupId: 'pre', members: ['n:a', 'n:b'], businessHours: null, openNow: true }]);
});

test('Dispatch, DispatchStream and WatchAssignments', async () => {
  const watch = client.watchAssignments(['n']);
  const handedOut = [];
  watch.on('data', (assignment) => handedOut.push(assignment));
  watch.on('error', () => {}); // cancelled at the end
  await watch.ready;

  // FEWEST_UNREAD ties go to the earliest created: n:a.
  const first = await client.dispatch({
    shopId: 'n', buyerId: 'b1', conversationId: 'c1', orderState: 'ORDER_STATE_NO_ORDER', at, trace: true,
  });
  assert.equal(first.reason, 'REASON_GROUP');
  assert.equal(first.agentId, 'n:a');
  assert.equal(first.groupId, 'pre');
  assert.equal(first.conversationId, 'c1');
  assert.ok(first.trace.some((step) => step.startsWith('strategy:FEWEST_UNREAD')), first.trace.join(' '));

  // Two batches on one stream, each answered in order; bad items carry their own status.
  const stream = client.dispatchStream();
  const one = await stream.send([
    { shopId: 'n', buyerId: 'b2', conversationId: 'c2', orderState: 'ORDER_STATE_NO_ORDER', at },
    { shopId: 'ghost', buyerId: 'b', conversationId: 'x', at },
  ]);
  assert.deepEqual(one.map((r) => [r.conversationId, r.reason, r.agentId]), [
    ['c2', 'REASON_GROUP', 'n:b'],
    ['x', 'REASON_UNSPECIFIED', ''],
  ]);
  assert.equal(one[1].error.code, status.NOT_FOUND);
  assert.match(one[1].error.message, /ghost/);
  const two = await stream.send([
    { shopId: 'n', buyerId: 'b3', conversationId: 'c3', at },
    { shopId: 'n', buyerId: 'b4', conversationId: 'c4', at },
  ]);
  assert.deepEqual(two.map((r) => [r.conversationId, r.reason]), [['c3', 'REASON_QUEUED'], ['c4', 'REASON_QUEUED']]);
  stream.end();

  // A capacity raise drains the queue, oldest first, to the watcher.
  await client.putAgent({ shopId: 'n', agentId: 'n:a', maxCapacity: 3, createdAt: { seconds: 1, nanos: 0 } });
  const deadline = Date.now() + 10000;
  while (handedOut.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(handedOut.map((a) => [a.shopId, a.conversationId, a.agentId, a.reason]), [
    ['n', 'c3', 'n:a', 'REASON_GROUP'],
    ['n', 'c4', 'n:a', 'REASON_GROUP'],
  ]);
  assert.equal(typeof timestampMs(handedOut[0].at), 'number');
  watch.cancel();

  const batch = await client.dispatchBatch([{ shopId: 'n', buyerId: 'b5', conversationId: 'c5', at }]);
  assert.equal(batch[0].reason, 'REASON_QUEUED');
});

test('errors arrive as gRPC statuses', async () => {
  await assert.rejects(client.dispatch({ shopId: 'ghost', buyerId: 'b', conversationId: 'c', at }), (err) => {
    assert.equal(err.code, status.NOT_FOUND);
    assert.match(err.details, /ghost/);
    return true;
  });
  await assert.rejects(client.dispatch({ shopId: 'n', buyerId: 'b2', conversationId: 'c1', at }), (err) => {
    assert.equal(err.code, status.ALREADY_EXISTS);
    return true;
  });
  await assert.rejects(client.putAgent({ shopId: 'n', agentId: 'n:z', maxCapacity: 0 }), (err) => {
    assert.equal(err.code, status.INVALID_ARGUMENT);
    return true;
  });
});
