'use strict';
// Issue 14 through the Node.js client against the real server: a dispatch with a priority
// answers its place (`position`) and `estimatedWait` (spec §11), a retry answers the same
// (§12), and a re-route names the previous agent on WatchAssignments (§10).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { DispatchClient, timestamp } = require('..');
const { startServer } = require('../testing/server');

const T0 = 1_700_000_000_000;
const SEC = 1000;
const at = (ms) => timestamp(T0 + ms);
const durationMs = (d) => (d ? Number(d.seconds) * 1000 + Math.round(d.nanos / 1e6) : null);

let server;
let client;

before(async () => {
  server = startServer();
  client = new DispatchClient(`127.0.0.1:${await server.port}`, { timeoutMs: 10000 });
  await client.waitForReady();
});

after(async () => {
  if (client) client.close();
  if (server) assert.equal(await server.stop(), 0, server.log());
});

test('a dispatch with a priority answers its position and estimated wait', async () => {
  // One agent of capacity 1; two hand-outs from the queue 5 s apart give the shop its rate.
  await client.putShop({ shopId: 'w', mainAccount: 'w:main' });
  await client.putAgent({ shopId: 'w', agentId: 'w:a', maxCapacity: 1 });
  await client.setPresence({ shopId: 'w', agentId: 'w:a', presence: 'PRESENCE_ONLINE', at: at(0) });
  const closed = (conversationId, ms) => client.reportConversation({
    shopId: 'w', conversationId, event: 'CONVERSATION_EVENT_CLOSED', at: at(ms),
  });
  assert.equal((await client.dispatch({ shopId: 'w', buyerId: 'b0', conversationId: 'busy', at: at(0) })).agentId, 'w:a');
  const first = await client.dispatch({ shopId: 'w', buyerId: 'b1', conversationId: 'q1', at: at(0) });
  assert.deepEqual([first.reason, first.position, first.estimatedWait], ['REASON_QUEUED', 1, null]); // no rate yet
  await closed('busy', 10 * SEC); // q1 goes out
  await client.dispatch({ shopId: 'w', buyerId: 'b2', conversationId: 'q2', at: at(10 * SEC) });
  await closed('q1', 15 * SEC); // q2 goes out: two hand-outs, 5 s apart

  const low = await client.dispatch({ shopId: 'w', buyerId: 'b3', conversationId: 'q3', at: at(15 * SEC) });
  assert.deepEqual([low.reason, low.position, durationMs(low.estimatedWait)], ['REASON_QUEUED', 1, 5 * SEC]);
  const high = await client.dispatch({
    shopId: 'w', buyerId: 'b4', conversationId: 'q4', priority: 9, at: at(15 * SEC),
  });
  assert.deepEqual([high.reason, high.position, durationMs(high.estimatedWait)], ['REASON_QUEUED', 1, 5 * SEC]);
  // q4 went ahead of q3: a retry of q3 (same buyer, still open) answers its new place and changes nothing.
  const retry = await client.dispatch({ shopId: 'w', buyerId: 'b3', conversationId: 'q3', at: at(16 * SEC) });
  assert.deepEqual([retry.reason, retry.position, durationMs(retry.estimatedWait)], ['REASON_QUEUED', 2, 10 * SEC]);
  // The same through DispatchBatch (the engine's wire path).
  const [batched] = await client.dispatchBatch([
    { shopId: 'w', buyerId: 'b5', conversationId: 'q5', priority: 5, at: at(16 * SEC) },
  ]);
  assert.deepEqual([batched.position, durationMs(batched.estimatedWait)], [2, 10 * SEC]);
  const state = await client.getShopState('w');
  assert.deepEqual(state.queue.map((w) => [w.conversationId, w.priority, w.position]), [
    ['q4', 9, 1], ['q5', 5, 2], ['q3', 0, 3],
  ]);
});

test('a re-route reaches the watchers with the previous agent', async () => {
  await client.putShop({ shopId: 'r', mainAccount: 'r:main', rerouteUnansweredAfter: { seconds: 60, nanos: 0 } });
  for (const agentId of ['r:a', 'r:b']) {
    await client.putAgent({ shopId: 'r', agentId, maxCapacity: 5 });
    await client.setPresence({ shopId: 'r', agentId, presence: 'PRESENCE_ONLINE', at: at(0) });
  }
  const shop = await client.getShopState('r');
  assert.equal(durationMs(shop.config.rerouteUnansweredAfter), 60 * SEC);
  const watch = client.watchAssignments(['r']);
  const handedOut = [];
  watch.on('data', (assignment) => handedOut.push(assignment));
  watch.on('error', () => {}); // cancelled at the end
  await watch.ready;
  const first = await client.dispatch({ shopId: 'r', buyerId: 'rb', conversationId: 'r1', at: at(0) });
  // Nobody replies: a call whose `at` is past the deadline (or the server's next tick) fires it.
  await client.dispatch({ shopId: 'r', buyerId: 'rc', conversationId: 'r2', at: at(61 * SEC) });
  const deadline = Date.now() + 10000;
  while (!handedOut.some((a) => a.conversationId === 'r1') && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  watch.cancel();
  const moved = handedOut.find((a) => a.conversationId === 'r1');
  assert.ok(moved, JSON.stringify(handedOut));
  assert.equal(moved.reason, 'REASON_REROUTED');
  assert.equal(moved.previousAgentId, first.agentId);
  assert.notEqual(moved.agentId, first.agentId);
});
