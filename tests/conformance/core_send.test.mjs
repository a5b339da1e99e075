// MAP.md §8: map/send address forms, map/message, request/reply, message events, routing errors.
import assert from 'node:assert/strict';
import {
  btest, connectClient, connectAgent, inbox, record, rejects, RawWs, settle, sleep, T,
} from './lib/broker.mjs';

// Every test gets its own broker so that `delivered` lists are exact.
//
// Topology:          p (lead)
//                  /          \
//        k1 (worker, team)   k2 (reviewer, team)
//              |
//        g1 (worker)
//   o (worker, no parent, not in team)      clients: C (SDK), R (raw)
async function world(ctx) {
  const b = await ctx.broker();
  const C = await connectClient(b.url, { name: 'C' });
  const p = await connectAgent(b.url, { agentId: 'p', name: 'P', role: 'lead' });
  await p.createScope({ scopeId: 'team', name: 'Team' });
  const k1 = await connectAgent(b.url, { agentId: 'k1', role: 'worker', parent: 'p', scopes: ['team'] });
  const k2 = await connectAgent(b.url, { agentId: 'k2', role: 'reviewer', parent: 'p', scopes: ['team'] });
  const g1 = await connectAgent(b.url, { agentId: 'g1', role: 'worker', parent: 'k1' });
  const o = await connectAgent(b.url, { agentId: 'o', role: 'worker' });
  const R = await RawWs.open(b.url);
  const rconn = await R.connect({ name: 'R' });
  const agents = { p, k1, k2, g1, o };
  const boxes = Object.fromEntries(Object.entries(agents).map(([k, v]) => [k, inbox(v)]));
  return { b, C, R, rpid: rconn.participantId, cpid: C.connectResult.participantId, agents, boxes };
}

const sorted = (a) => [...a].sort();

async function expectDelivery(w, res, expected, { from, to, payload, meta } = {}) {
  assert.equal(typeof res.messageId, 'string');
  assert.ok(Array.isArray(res.delivered), `delivered must be an array: ${JSON.stringify(res)}`);
  assert.deepEqual(sorted(res.delivered), sorted(expected), `delivered for ${JSON.stringify(to)}`);
  for (const id of expected) {
    if (!w.boxes[id]) continue; // non-agent recipients are checked separately
    const m = await w.boxes[id].waitFor((x) => x.id === res.messageId, T, `map/message to ${id}`);
    if (from !== undefined) assert.equal(m.from, from);
    if (to !== undefined) assert.deepEqual(m.to, to, 'message.to must be the address as written');
    if (payload !== undefined) assert.deepEqual(m.payload, payload);
    if (meta !== undefined) assert.deepEqual(m.meta, meta);
    assert.ok(Number.isInteger(m.timestamp), 'message.timestamp is integer ms');
  }
  // nobody else got it
  await sleep(100);
  for (const [id, box] of Object.entries(w.boxes)) {
    if (!expected.includes(id)) {
      assert.ok(!box.msgs.some((x) => x.id === res.messageId), `${id} must not receive message for ${JSON.stringify(to)}`);
    }
  }
}

btest('bare string address and {agent}', async (ctx) => {
  const w = await world(ctx);
  const { k1 } = w.agents;
  let r = await k1.send('k2', { hi: 1 });
  await expectDelivery(w, r, ['k2'], { from: 'k1', to: 'k2', payload: { hi: 1 } });
  r = await k1.send({ agent: 'k2' }, { hi: 2 });
  await expectDelivery(w, r, ['k2'], { from: 'k1', to: { agent: 'k2' }, payload: { hi: 2 } });
  // explicit self-address is delivered
  r = await k1.send({ agent: 'k1' }, 'self');
  await expectDelivery(w, r, ['k1'], { payload: 'self' });
});

btest('{agents:[...]} multi address: dedup, unknown skipped, none resolving -> 2001', async (ctx) => {
  const w = await world(ctx);
  const r = await w.C.send({ agents: ['k2', 'o', 'k2', 'nope'] }, { m: 1 });
  await expectDelivery(w, r, ['k2', 'o'], { from: w.cpid, to: { agents: ['k2', 'o', 'k2', 'nope'] } });
  const e = await rejects(w.C.send({ agents: ['nope1', 'nope2'] }, 1));
  assert.equal(e.code, 2001);
});

btest('{scope} address: members except sender; unknown scope 2002', async (ctx) => {
  const w = await world(ctx);
  let r = await w.agents.p.sendToScope('team', { s: 1 });
  await expectDelivery(w, r, ['k1', 'k2'], { from: 'p', to: { scope: 'team' } });
  r = await w.agents.k1.sendToScope('team', { s: 2 });
  await expectDelivery(w, r, ['k2'], { from: 'k1' });
  const e = await rejects(w.C.sendToScope('nowhere', 1));
  assert.equal(e.code, 2002);
  assert.equal(e.data?.category, 'routing');
});

btest('{role} and {role, within} addresses', async (ctx) => {
  const w = await world(ctx);
  let r = await w.C.sendToRole('worker', { r: 1 });
  await expectDelivery(w, r, ['k1', 'g1', 'o'], { from: w.cpid });
  r = await w.agents.p.send({ role: 'worker', within: 'team' }, { r: 2 });
  await expectDelivery(w, r, ['k1'], { to: { role: 'worker', within: 'team' } });
  r = await w.agents.k1.send({ role: 'worker' }, { r: 3 });
  await expectDelivery(w, r, ['g1', 'o']);
  r = await w.C.send({ role: 'astronaut' }, 1);
  await expectDelivery(w, r, []);
});

btest('hierarchical: parent, children, siblings (SDK helpers set meta.relationship)', async (ctx) => {
  const w = await world(ctx);
  let r = await w.agents.k1.sendToParent({ up: 1 });
  await expectDelivery(w, r, ['p'], { from: 'k1', to: { parent: true }, meta: { relationship: 'child-to-parent' } });
  r = await w.agents.p.sendToParent({ up: 2 });
  await expectDelivery(w, r, []);
  r = await w.agents.p.sendToChildren({ down: 1 });
  await expectDelivery(w, r, ['k1', 'k2'], { to: { children: true }, meta: { relationship: 'parent-to-child' } });
  r = await w.agents.k1.sendToSiblings({ side: 1 });
  await expectDelivery(w, r, ['k2'], { to: { siblings: true }, meta: { relationship: 'peer' } });
  r = await w.agents.o.sendToChildren({ none: 1 });
  await expectDelivery(w, r, []);
});

btest('hierarchical: ancestors / descendants with and without depth', async (ctx) => {
  const w = await world(ctx);
  let r = await w.agents.g1.send({ ancestors: true }, 1);
  await expectDelivery(w, r, ['k1', 'p']);
  r = await w.agents.g1.send({ ancestors: true, depth: 1 }, 2);
  await expectDelivery(w, r, ['k1']);
  r = await w.agents.p.send({ descendants: true }, 3);
  await expectDelivery(w, r, ['k1', 'k2', 'g1']);
  r = await w.agents.p.send({ descendants: true, depth: 1 }, 4);
  await expectDelivery(w, r, ['k1', 'k2']);
  r = await w.agents.p.send({ children: true, depth: 2 }, 5);
  assert.ok(['k1', 'k2'].every((x) => r.delivered.includes(x)));
});

btest('{broadcast} reaches every agent except the sender; {system:true} delivers nowhere', async (ctx) => {
  const w = await world(ctx);
  let r = await w.agents.k1.send({ broadcast: true }, { b: 1 });
  await expectDelivery(w, r, ['p', 'k2', 'g1', 'o'], { from: 'k1', to: { broadcast: true } });
  r = await w.C.broadcast({ b: 2 });
  await expectDelivery(w, r, ['p', 'k1', 'k2', 'g1', 'o'], { from: w.cpid });
  r = await w.C.send({ system: true }, { sys: 1 });
  await expectDelivery(w, r, []);
});

btest('{participant} reaches a client connection; unknown participant -> 2000', async (ctx) => {
  const w = await world(ctx);
  const r = await w.agents.k1.send({ participant: w.rpid }, { to: 'raw client' }, { priority: 'high' });
  await expectDelivery(w, r, [w.rpid]);
  const f = await w.R.waitFor((x) => x.method === 'map/message' && x.params?.message?.id === r.messageId);
  assert.ok(!('id' in f), 'map/message is a notification');
  const m = f.params.message;
  assert.equal(m.from, 'k1');
  assert.deepEqual(m.to, { participant: w.rpid });
  assert.deepEqual(m.payload, { to: 'raw client' });
  assert.deepEqual(m.meta, { priority: 'high' });
  const r2 = await w.C.send({ participant: 'k2' }, 'agent participant');
  await expectDelivery(w, r2, ['k2']);
  const e = await rejects(w.C.send({ participant: 'nobody-here' }, 1));
  assert.equal(e.code, 2000);
});

btest('{agent: <client participantId>} falls back to the participant (reply path to clients)', async (ctx) => {
  const w = await world(ctx);
  const r = await w.agents.k2.send({ agent: w.rpid }, { reply: 'to client' });
  assert.deepEqual(r.delivered, [w.rpid]);
  const f = await w.R.waitFor((x) => x.method === 'map/message' && x.params?.message?.id === r.messageId);
  assert.equal(f.params.message.from, 'k2');
  const r2 = await w.agents.k2.send(w.rpid, { bare: true });
  assert.deepEqual(r2.delivered, [w.rpid]);
});

btest('{participants: all|agents|clients}', async (ctx) => {
  const w = await world(ctx);
  const allAgents = ['p', 'k1', 'k2', 'g1', 'o'];
  let r = await w.C.send({ participants: 'agents' }, 'pa');
  await expectDelivery(w, r, allAgents);
  r = await w.agents.k1.send({ participants: 'clients' }, 'pc');
  await expectDelivery(w, r, [w.cpid, w.rpid]);
  await w.R.waitFor((x) => x.method === 'map/message' && x.params?.message?.id === r.messageId);
  r = await w.agents.k1.send({ participants: 'all' }, 'pall');
  await expectDelivery(w, r, ['p', 'k2', 'g1', 'o', w.cpid, w.rpid]);
});

btest('payload and meta are delivered unchanged (incl. unknown meta keys, null, unicode)', async (ctx) => {
  const w = await world(ctx);
  const payload = { text: 'héllo 🚀', n: 1795276113889, f: 1.5, nul: null, arr: [1, 'two', { three: 3 }], big: 9007199254740991 };
  const meta = { priority: 'urgent', correlationId: 'corr-xyz', expectsResponse: true, protocol: 'acp', delivery: 'fire-and-forget', ttlMs: 1000, _meta: { vendor: { x: 1 } } };
  const r = await w.agents.k1.send({ agent: 'k2' }, payload, meta);
  await expectDelivery(w, r, ['k2'], { from: 'k1', payload, meta });
  // no payload at all: message has no payload
  const r2 = await w.C.send({ agent: 'o' });
  const m2 = await w.boxes.o.waitFor((x) => x.id === r2.messageId);
  assert.equal(m2.payload, undefined);
  // scalar payloads
  for (const pl of [0, false, 'str', null, []]) {
    const r3 = await w.C.send({ agent: 'o' }, pl);
    const m3 = await w.boxes.o.waitFor((x) => x.id === r3.messageId);
    assert.deepEqual(m3.payload, pl);
  }
});

btest('ClientConnection.request() round trip with an agent that reply()s', async (ctx) => {
  const w = await world(ctx);
  // Do not await reply() inside the handler: the SDK processes incoming frames
  // one at a time and awaits each handler, so awaiting a request there would
  // block the agent's own receive loop (SDK behaviour, not a broker issue).
  w.agents.k2.onMessage((m) => {
    if (m.payload && m.payload.ping !== undefined) void w.agents.k2.reply(m, { pong: m.payload.ping });
  });
  const reply = await w.C.request({ agent: 'k2' }, { ping: 41 }, { timeout: 4000 });
  assert.deepEqual(reply.payload, { pong: 41 });
  assert.equal(reply.from, 'k2');
  assert.equal(reply.meta?.isResult, true);
  assert.deepEqual(reply.to, { agent: w.cpid });
  // a second request on the same connection also works
  const reply2 = await w.C.request({ agent: 'k2' }, { ping: 42 }, { timeout: 4000 });
  assert.deepEqual(reply2.payload, { pong: 42 });
});

btest('message_sent / message_delivered events: data, source = sender, causedBy', async (ctx) => {
  const w = await world(ctx);
  const rec = record(await w.C.subscribe({ eventTypes: ['message_sent', 'message_delivered'] }));
  const r = await w.agents.k1.send({ agents: ['k2', 'o'] }, { e: 1 }, { correlationId: 'c-ev', priority: 'high' });
  const sent = await rec.waitFor((e) => e.type === 'message_sent' && e.data?.messageId === r.messageId);
  assert.equal(sent.source, 'k1');
  assert.equal(sent.data.from, 'k1');
  assert.deepEqual(sent.data.to, { agents: ['k2', 'o'] });
  assert.equal(sent.data.message?.id, r.messageId);
  assert.deepEqual(sent.data.message?.payload, { e: 1 });
  await rec.waitFor((e) => e.type === 'message_delivered' && e.data?.messageId === r.messageId && e.data.deliveredTo?.[0] === 'o');
  await settle(w.C);
  const dels = rec.events.filter((e) => e.type === 'message_delivered' && e.data?.messageId === r.messageId);
  assert.equal(dels.length, 2);
  assert.deepEqual(sorted(dels.flatMap((d) => d.data.deliveredTo)), ['k2', 'o']);
  for (const d of dels) {
    assert.equal(d.source, 'k1', 'message_delivered.source is the sender');
    assert.deepEqual(d.causedBy, [sent.id]);
    assert.equal(d.data.from, 'k1');
    assert.equal(d.data.message?.id, r.messageId);
    assert.deepEqual(d.data.message?.payload, { e: 1 });
    assert.equal(d.data.message?.meta?.correlationId, 'c-ev');
    assert.equal(d.data.correlationId, undefined, 'data.correlationId only on replies (meta.isResult)');
  }
  // ordering: message_sent before its deliveries
  const order = rec.events.filter((e) => e.data?.messageId === r.messageId).map((e) => e.type);
  assert.equal(order[0], 'message_sent');
  // a reply carries data.correlationId
  const r2 = await w.agents.k2.send({ agent: 'k1' }, { ok: 1 }, { correlationId: 'c-ev', isResult: true });
  const d2 = await rec.waitFor((e) => e.type === 'message_delivered' && e.data?.messageId === r2.messageId);
  assert.equal(d2.data.correlationId, 'c-ev');
  assert.equal(d2.source, 'k2');
});

btest('routing errors: 2001 unknown agent, 2002 unknown scope, -32602 bad address', async (ctx) => {
  const w = await world(ctx);
  let e = await rejects(w.C.send('ghost', 1));
  assert.equal(e.code, 2001);
  assert.equal(e.data?.category, 'routing');
  e = await rejects(w.C.send({ agent: 'ghost' }, 1));
  assert.equal(e.code, 2001);
  e = await rejects(w.C.send({ scope: 'ghost-scope' }, 1));
  assert.equal(e.code, 2002);
  for (const bad of [{}, { bogus: 1 }, 42, [], { agents: 'k1' }]) {
    e = await rejects(w.C.send(bad, 1), `send to ${JSON.stringify(bad)}`);
    assert.equal(e.code, -32602, `to=${JSON.stringify(bad)}`);
  }
  const f = await w.R.call('map/send', { payload: 1 });
  assert.equal(f.error?.code, -32602);
});
