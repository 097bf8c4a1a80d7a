// Path 4 of the lifecycle benchmark: the auto-batching Node client (clients/node).
//
//   taskset -c 1 node bench/lifecycle_node.js --port P --server-pid PID --items items.json \
//       --warmup warm.json --concurrency 512
//
// items.json: the workload of bench/lifecycle.py (written by bench/lifecycle_bench.py):
// [["c", shop, buyer, conversation, orderState, atMs] | ["p", shop, agent, presence, atMs], ...].
// `--concurrency` async tasks each run whole conversations one call after the other
// (dispatch, 3 x (buyer message, agent reply), close) through one DispatchClient with
// autoBatch on. The server's CPU (utime+stime of --server-pid, /proc) is read around the
// measured part. Prints one JSON line.
'use strict';

const fs = require('fs');
const path = require('path');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const { DispatchClient, timestamp } = require(path.join(__dirname, '..', 'clients', 'node'));

const EVENTS = ['CONVERSATION_EVENT_BUYER_MESSAGE', 'CONVERSATION_EVENT_AGENT_REPLY',
  'CONVERSATION_EVENT_BUYER_MESSAGE', 'CONVERSATION_EVENT_AGENT_REPLY',
  'CONVERSATION_EVENT_BUYER_MESSAGE', 'CONVERSATION_EVENT_AGENT_REPLY', 'CONVERSATION_EVENT_CLOSED'];
const TICK = 100; // sysconf(_SC_CLK_TCK) on Linux

function cpuSeconds(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(')').pop().trim().split(/\s+/);
  return (Number(f[11]) + Number(f[12])) / TICK;
}

async function main() {
  const client = new DispatchClient(`127.0.0.1:${args.port}`, { autoBatch: true, timeoutMs: 60000 });
  await client.waitForReady();
  const errors = {};
  const reasons = {};
  let counting = false;
  const call = async (p) => {
    try {
      return await p;
    } catch (e) {
      const key = `${e.code}:${String(e.details || e.message).slice(0, 60)}`;
      errors[key] = (errors[key] || 0) + 1;
      return null;
    }
  };
  const runItem = async (it) => {
    if (it[0] === 'p') {
      await call(client.setPresence({ shopId: it[1], agentId: it[2], presence: it[3], at: timestamp(it[4]) }));
      return;
    }
    const [, shopId, buyerId, conversationId, orderState, at] = it;
    const r = await call(client.dispatch({ shopId, buyerId, conversationId, orderState, at: timestamp(at) }));
    if (r && counting) reasons[r.reason] = (reasons[r.reason] || 0) + 1;
    for (let k = 0; k < EVENTS.length; k++) {
      await call(client.reportConversation({ shopId, conversationId, event: EVENTS[k], at: timestamp(at + k + 1) }));
    }
  };
  const closedLoop = async (items, concurrency) => {
    let next = 0;
    const worker = async () => {
      while (next < items.length) await runItem(items[next++]);
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  };
  const concurrency = Number(args.concurrency || 512);
  await closedLoop(JSON.parse(fs.readFileSync(args.warmup, 'utf8')), concurrency);
  for (const k of Object.keys(errors)) delete errors[k];
  const items = JSON.parse(fs.readFileSync(args.items, 'utf8'));
  const stats0 = client.batchStats;
  counting = true;
  const cpu0 = cpuSeconds(Number(args['server-pid']));
  const t0 = process.hrtime.bigint();
  await closedLoop(items, concurrency);
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = cpuSeconds(Number(args['server-pid'])) - cpu0;
  const stats1 = client.batchStats;
  client.close();
  const conversations = items.filter((x) => x[0] === 'c').length;
  const operations = conversations * 8 + items.length - conversations;
  const batches = stats1.batches - stats0.batches;
  console.log(JSON.stringify({
    path: 'node', conversations, operations, concurrency, elapsed_s: elapsed, server_cpu_s: cpu,
    batches, ops_per_batch: (stats1.operations - stats0.operations) / Math.max(1, batches),
    largest_batch: stats1.largestBatch, errors, reasons,
    conv_per_server_cpu_s: conversations / Math.max(1e-9, cpu), conv_per_s: conversations / elapsed,
    server_cpu_us_per_op: cpu * 1e6 / operations,
  }));
}

main().catch((e) => { console.error(e); process.exit(1); });
