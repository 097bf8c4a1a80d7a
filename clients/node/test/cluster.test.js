'use strict';
// ClusterClient (issue 15) against three real nodes: `python -m dispatcher serve
// --cluster-map F --node dispatch-i` on free loopback ports, one map of 64
// partitions. Calls reach the owner, batches spanning nodes answer in order, a
// stale map is corrected on WRONG_NODE (automatic batches, unary calls, batch
// items, watches), a watch fans in from two nodes, and a node that keeps
// refusing (an in-process fake) rejects with `err.wrongNode` after one retry.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const {
  ClusterClient, DispatchClient, Routes, crc32, crc32Table, partitionOf, wrongNodeOf, pb, grpc, status,
} = require('..');
const { ROOT, PYTHON } = require('../testing/server');

const P = 64;
const N = 3;
const tick = (ms = 20) => new Promise((resolve) => setTimeout(resolve, ms));

let dir;
let nodes = [];   // [{ name, address, start, end, child, exited, log }]
const clients = [];

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** `python -m dispatcher serve` as node `name` of the map in `mapFile`; resolves once it listens. */
function startNode(name, port, mapFile) {
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (key.startsWith('DISPATCH_')) delete env[key];
  const child = spawn(PYTHON, [
    '-m', 'dispatcher', 'serve', '--port', String(port), '--no-auth', '--log-format', 'json',
    '--cluster-map', mapFile, '--node', name,
  ], { cwd: ROOT, env, stdio: ['ignore', 'ignore', 'pipe'] });
  const node = { child, log: '' };
  node.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code === null ? signal : code)));
  node.started = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start:\n${node.log}`)), 30000);
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      node.log += `${line}\n`;
      if (line.startsWith('{') && JSON.parse(line).event === 'server.started') { clearTimeout(timer); resolve(); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`${name} exited (${code}):\n${node.log}`)); });
  });
  node.started.catch(() => {});
  return node;
}

/** The map as GetClusterMap answers it, `rotate` moving each node's partitions to the next node's address. */
function clusterMap(rotate = 0) {
  return {
    partitionCount: P,
    epoch: '1',
    node: 'dispatch-0',
    nodes: nodes.map((n, i) => ({
      name: n.name, address: nodes[(i + rotate) % N].address, partitions: [{ start: n.start, end: n.end }],
    })),
  };
}

const indexOf = (shop) => nodes.findIndex((n) => {
  const p = partitionOf(shop, P);
  return p >= n.start && p < n.end;
});

/** The first `${prefix}-k` owned by node `i`. */
function shopOn(i, prefix) {
  for (let k = 0; k < 10000; k++) if (indexOf(`${prefix}-${k}`) === i) return `${prefix}-${k}`;
  throw new Error('no shop found');
}

function newCluster(seeds, options = {}) {
  const client = new ClusterClient(seeds, { timeoutMs: 10000, ...options });
  clients.push(client);
  return client;
}

async function setup(client, shopId, maxCapacity = 1) {
  await client.putShop({ shopId, mainAccount: shopId });
  await client.putAgent({ shopId, agentId: `${shopId}:a`, maxCapacity });
  await client.setPresence({ shopId, agentId: `${shopId}:a`, presence: 'PRESENCE_ONLINE' });
}

async function directShops(address) {
  const direct = new DispatchClient(address, { timeoutMs: 10000 });
  try {
    return await direct.listShops();
  } finally {
    direct.close();
  }
}

async function collect(watch, n, timeoutMs = 10000) {
  const got = [];
  const onData = (a) => got.push(a);
  watch.on('data', onData);
  const deadline = Date.now() + timeoutMs;
  while (got.length < n && Date.now() < deadline) await tick();
  watch.off('data', onData);
  return got;
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dispatch-cluster-'));
  const ports = [];
  while (ports.length < N) {
    const port = await freePort();
    if (!ports.includes(port)) ports.push(port);
  }
  nodes = ports.map((port, i) => ({
    name: `dispatch-${i}`, address: `127.0.0.1:${port}`, port, start: Math.floor((P * i) / N), end: Math.floor((P * (i + 1)) / N),
  }));
  const toml = [`partitions = ${P}`, 'epoch = 1'];
  for (const n of nodes) toml.push('', '[[nodes]]', `name = "${n.name}"`, `address = "${n.address}"`, `partitions = "${n.start}-${n.end - 1}"`);
  const mapFile = path.join(dir, 'cluster.toml');
  fs.writeFileSync(mapFile, `${toml.join('\n')}\n`);
  for (const n of nodes) Object.assign(n, startNode(n.name, n.port, mapFile));
  await Promise.all(nodes.map((n) => n.started));
});

after(async () => {
  for (const client of clients) client.close();
  for (const n of nodes) {
    if (!n.child) continue;
    if (n.child.exitCode === null && n.child.signalCode === null) n.child.kill('SIGTERM');
    assert.equal(await n.exited, 0, n.log);
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('CRC-32 and partitions are zlib\'s (as the server computes them)', () => {
  const python = [ // zlib.crc32(s.encode()) and its partition of 4096, from Python
    ['', 0, 0], ['demo', 3594706848, 4000], ['shop-1', 3547740048, 1936], ['店铺-42', 1841011815, 3175],
    ['x'.repeat(200), 2127260582, 2982], ['ü🙂', 546640537, 665],
  ];
  for (const [shop, crc, partition] of python) {
    assert.equal(crc32(shop), crc, shop);
    assert.equal(crc32Table(Buffer.from(shop, 'utf8')), crc, shop);
    assert.equal(partitionOf(shop, 4096), partition, shop);
  }
  for (let i = 0; i < 200; i++) {
    const bytes = Buffer.from(Array.from({ length: i }, (_, k) => (k * 131 + i * 7) & 0xff));
    assert.equal(crc32Table(bytes), crc32(bytes));
  }
  const routes = new Routes(clusterMap(), 'seed:1');
  assert.deepEqual(routes.addresses, nodes.map((n) => n.address));
  for (const shop of ['demo', 'a', 'b', 'c']) assert.equal(routes.addressOf(shop), nodes[indexOf(shop)].address);
  const alone = new Routes({ partitionCount: 0, epoch: '0', nodes: [] }, 'seed:1');
  assert.deepEqual([alone.addresses, alone.addressOf('x')], [['seed:1'], 'seed:1']);
});

test('calls go to the owner; batches spanning nodes answer in order', async () => {
  const shops = [0, 1, 2].map((i) => shopOn(i, 'own'));
  const client = newCluster([nodes[2].address, nodes[0].address]);
  await client.waitForReady();
  assert.equal(client.routes.node, 'dispatch-2');
  for (const shop of shops) await setup(client, shop, 10);
  for (let i = 0; i < N; i++) {
    const held = await directShops(nodes[i].address);
    assert.ok(held.includes(shops[i]), held.join());
    assert.deepEqual(held.filter((s) => shops.includes(s)), [shops[i]]);
  }
  const all = await client.listShops();
  assert.ok(shops.every((s) => all.includes(s)));

  // Automatic batches, one per node, in one turn.
  const answers = await Promise.all(shops.map((shopId) => client.dispatch({ shopId, buyerId: `b-${shopId}`, conversationId: `c-${shopId}` })));
  assert.deepEqual(answers.map((a) => a.agentId), shops.map((s) => `${s}:a`));

  const requests = Array.from({ length: 9 }, (_, i) => ({ shopId: shops[i % 3], buyerId: `bb${i}`, conversationId: `cb${i}` }));
  const batch = await client.dispatchBatch(requests);
  assert.deepEqual(batch.map((r) => [r.conversationId, r.agentId, r.error]), requests.map((r) => [r.conversationId, `${r.shopId}:a`, null]));

  const { results } = await client.operate([
    { dispatch: { shopId: shops[2], buyerId: 'bo0', conversationId: 'co0' } },
    { reportConversation: { shopId: shops[0], conversationId: 'cb0', event: 'CONVERSATION_EVENT_CLOSED' } },
    { dispatch: { shopId: shops[1], buyerId: 'bo2', conversationId: 'cb1' } }, // another buyer's: ALREADY_EXISTS
    { dispatch: { shopId: shops[0], buyerId: 'bo3', conversationId: 'co3' } },
  ]);
  assert.deepEqual(results.map((r) => (r.error ? r.error.code : r.kind)), ['dispatch', 'reportConversation', status.ALREADY_EXISTS, 'dispatch']);
  assert.equal(results[0].dispatch.agentId, `${shops[2]}:a`);
  assert.equal(results[3].dispatch.conversationId, 'co3');
  assert.equal(client.wrongNodeRetries, 0);
  assert.deepEqual([...client.clients().keys()].sort(), nodes.map((n) => n.address).sort());
  client.close();
  assert.equal(client.clients().size, 0);
  assert.throws(() => client.client(nodes[0].address), /closed/);
});

test('a stale map is corrected on WRONG_NODE', async () => {
  const shops = [0, 1, 2].map((i) => shopOn(i, 'stale'));
  const setupClient = newCluster(nodes.map((n) => n.address));
  for (const shop of shops) await setup(setupClient, shop, 10);

  // A refusal as a unary call's status (details in grpc-status-details-bin).
  const unary = newCluster(nodes[0].address, { clusterMap: clusterMap(1), autoBatch: false });
  assert.equal(unary.routes.addressOf(shops[0]), nodes[1].address); // wrong on purpose
  const direct = new DispatchClient(nodes[1].address);
  clients.push(direct);
  await assert.rejects(direct.getShopState(shops[0]), (err) => {
    const wrong = wrongNodeOf(err);
    assert.equal(err.code, status.FAILED_PRECONDITION);
    assert.deepEqual(wrong, { shopId: shops[0], partition: partitionOf(shops[0], P), owner: 'dispatch-0', ownerAddress: nodes[0].address, epoch: '1' });
    return true;
  });
  assert.equal((await unary.dispatch({ shopId: shops[0], buyerId: 'b-u', conversationId: 'c-u' })).agentId, `${shops[0]}:a`);
  assert.deepEqual([unary.wrongNodeRetries, unary.mapFetches], [1, 1]);
  assert.equal(unary.routes.addressOf(shops[0]), nodes[0].address); // the map was replaced
  assert.equal((await unary.getShopState(shops[1])).shopId, shops[1]);
  assert.equal(unary.wrongNodeRetries, 1);

  // Automatic batches: an operation's error in the OperateStream answer; one refresh for the three.
  const batched = newCluster(nodes[0].address, { clusterMap: clusterMap(2) });
  const answers = await Promise.all(shops.map((shopId) => batched.dispatch({ shopId, buyerId: 'b-a', conversationId: 'c-a' })));
  assert.deepEqual(answers.map((a) => a.agentId), shops.map((s) => `${s}:a`));
  assert.deepEqual([batched.wrongNodeRetries, batched.mapFetches], [3, 1]);

  // Batch items: the refused ones go again to their owners; the order holds.
  const split = newCluster(nodes[0].address, { clusterMap: clusterMap(1) });
  const requests = Array.from({ length: 6 }, (_, i) => ({ shopId: shops[i % 3], buyerId: `bs${i}`, conversationId: `cs${i}` }));
  const batch = await split.dispatchBatch(requests);
  assert.deepEqual(batch.map((r) => [r.conversationId, r.agentId, r.error]), requests.map((r) => [r.conversationId, `${r.shopId}:a`, null]));
  assert.equal(split.wrongNodeRetries, 6);
  const { results } = await split.operate(shops.map((shopId) => ({ dispatch: { shopId, buyerId: 'bo', conversationId: 'co' } })));
  assert.deepEqual(results.map((r) => r.dispatch.agentId), shops.map((s) => `${s}:a`));
  assert.equal(split.wrongNodeRetries, 6);
});

test('a watch fans in hand-outs from two nodes; a stale one moves to the owner', async () => {
  const [a, b] = [shopOn(0, 'watch'), shopOn(2, 'watch')];
  const client = newCluster(nodes[1].address);
  for (const shop of [a, b]) {
    await setup(client, shop, 1);
    assert.equal((await client.dispatch({ shopId: shop, buyerId: 'b1', conversationId: 'c1' })).agentId, `${shop}:a`);
    assert.equal((await client.dispatch({ shopId: shop, buyerId: 'b2', conversationId: 'c2' })).reason, 'REASON_QUEUED');
    assert.equal((await client.dispatch({ shopId: shop, buyerId: 'b3', conversationId: 'c3' })).reason, 'REASON_QUEUED');
  }
  const named = client.watchAssignments([a, b]);
  const every = client.watchAssignments();
  const errors = [];
  for (const w of [named, every]) w.on('error', (err) => errors.push(err.code));
  await Promise.all([named.ready, every.ready]);
  assert.deepEqual([named.sources.length, every.sources.length], [2, 3]);
  for (const shop of [a, b]) await client.reportConversation({ shopId: shop, conversationId: 'c1', event: 'CONVERSATION_EVENT_CLOSED' });
  const expected = [[a, 'c2', `${a}:a`], [b, 'c2', `${b}:a`]].sort();
  for (const w of [named, every]) {
    const got = await collect(w, 2);
    assert.deepEqual(got.map((x) => [x.shopId, x.conversationId, x.agentId]).sort(), expected);
  }
  named.cancel();
  every.cancel();
  await tick();
  assert.deepEqual(errors, [status.CANCELLED, status.CANCELLED]); // as a single node's watch ends

  // A stale map: the node it names refuses the watch; it is registered on the owner instead.
  const stale = newCluster(nodes[0].address, { clusterMap: clusterMap(1) });
  const watch = stale.watchAssignments([a]);
  watch.on('error', () => {});
  await watch.ready;
  assert.equal(stale.wrongNodeRetries, 1);
  assert.deepEqual(watch.sources.map((s) => s.address), [nodes[0].address]);
  await client.reportConversation({ shopId: a, conversationId: 'c2', event: 'CONVERSATION_EVENT_CLOSED' });
  const [handedOut] = await collect(watch, 1);
  assert.deepEqual([handedOut.shopId, handedOut.conversationId], [a, 'c3']);
  watch.cancel();
});

test('a node that keeps refusing: the error names the owner after one retry', async () => {
  const calls = [];
  const server = new grpc.Server();
  let address;
  const refusal = (shopId) => {
    const info = Buffer.concat([ // google.rpc.ErrorInfo, by hand
      field(1, 'WRONG_NODE'), field(2, 'dispatch.v1'),
      ...Object.entries({ shop_id: shopId, partition: '0', owner: 'liar-1', owner_address: address, epoch: '3' })
        .map(([k, v]) => field(3, Buffer.concat([field(1, k), field(2, v)]))),
    ]);
    const any = Buffer.concat([field(1, 'type.googleapis.com/google.rpc.ErrorInfo'), field(2, info)]);
    return { code: status.FAILED_PRECONDITION, message: `shop '${shopId}' belongs elsewhere`, details: [{ type_url: 'type.googleapis.com/google.rpc.ErrorInfo', value: info }], any };
  };
  server.addService(pb.Cluster.service, {
    getClusterMap(_call, callback) {
      calls.push('GetClusterMap');
      callback(null, { partitionCount: 1, epoch: '3', node: 'liar-1', nodes: [{ name: 'liar-1', address, partitions: [{ start: 0, end: 1 }] }] });
    },
  });
  server.addService(pb.Dispatch.service, {
    dispatch(call, callback) {
      calls.push('Dispatch');
      const r = refusal(call.request.shopId);
      const metadata = new grpc.Metadata();
      metadata.set('grpc-status-details-bin', Buffer.concat([varintField(1, r.code), field(2, r.message), field(3, r.any)]));
      callback({ code: r.code, details: r.message, metadata });
    },
    dispatchBatch(call, callback) {
      calls.push('DispatchBatch');
      callback(null, { responses: call.request.requests.map((q) => ({ conversationId: q.conversationId, error: refusal(q.shopId) })) });
    },
  });
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
  });
  address = `127.0.0.1:${port}`;
  try {
    const client = newCluster(address, { autoBatch: false, timeoutMs: 5000 });
    await assert.rejects(client.dispatch({ shopId: 's', buyerId: 'b', conversationId: 'c' }), (err) => {
      assert.equal(err.code, status.FAILED_PRECONDITION);
      assert.deepEqual(err.wrongNode, { shopId: 's', partition: 0, owner: 'liar-1', ownerAddress: address, epoch: '3' });
      return true;
    });
    assert.deepEqual(calls, ['GetClusterMap', 'Dispatch', 'GetClusterMap', 'Dispatch']); // retried exactly once
    const [answer] = await client.dispatchBatch([{ shopId: 's', buyerId: 'b', conversationId: 'c' }]);
    assert.equal(answer.error.code, status.FAILED_PRECONDITION);
    assert.equal(wrongNodeOf(answer.error).owner, 'liar-1'); // the item keeps its error
    assert.deepEqual(calls.slice(4), ['DispatchBatch', 'GetClusterMap', 'DispatchBatch']);
  } finally {
    server.forceShutdown();
  }
});

test('a server outside a cluster takes every call', async () => {
  const { startServer } = require('../testing/server');
  const single = startServer();
  try {
    const client = newCluster(`127.0.0.1:${await single.port}`);
    await client.waitForReady();
    assert.equal(client.routes.partitionCount, 0);
    for (const shop of ['one', 'two']) await setup(client, shop);
    assert.equal((await client.dispatch({ shopId: 'two', buyerId: 'b', conversationId: 'c' })).agentId, 'two:a');
    assert.deepEqual(await client.listShops(), ['one', 'two']);
    client.close();
  } finally {
    assert.equal(await single.stop(), 0, single.log());
  }
});

function varint(n) {
  const out = [];
  while (n >= 128) { out.push((n % 128) | 128); n = Math.floor(n / 128); }
  out.push(n);
  return Buffer.from(out);
}
function varintField(number, value) { return Buffer.concat([varint(number * 8), varint(value)]); }
function field(number, value) {
  const bytes = Buffer.isBuffer(value) ? value : Buffer.from(String(value), 'utf8');
  return Buffer.concat([varint(number * 8 + 2), varint(bytes.length), bytes]);
}
