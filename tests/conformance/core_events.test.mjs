// MAP.md §9, §11, §12.1: subscriptions, filters, sequence numbers, unsubscribe, replay, graph, inject.
import assert from 'node:assert/strict';
import {
  useBroker, btest, connectClient, connectAgent, record, inbox, rejects, RawWs, settle, sleep, uid, T,
} from './lib/broker.mjs';

const B = useBroker();

/** Register and immediately unregister a few agents to generate events. */
async function churn(url, n, opts = {}) {
  const made = [];
  for (let i = 0; i < n; i++) {
    const a = await connectAgent(url, { agentId: uid(opts.prefix || 'ch'), role: opts.role });
    made.push(a.agentId);
    if (!opts.keep) await a.disconnect();
  }
  return made;
}

btest('eventTypes: underscore and dotted spellings and agent.* wildcard', B, async () => {
  const c = await connectClient(B.url);
  const under = record(await c.subscribe({ eventTypes: ['agent_registered'] }));
  const dotted = record(await c.subscribe({ eventTypes: ['agent.registered'] }));
  const wild = record(await c.subscribe({ eventTypes: ['agent.*'] }));
  const a = await connectAgent(B.url, { agentId: uid('et') });
  await a.busy();
  const sid = uid('sc');
  await a.createScope({ scopeId: sid });
  await a.disconnect();
  for (const r of [under, dotted]) {
    const ev = await r.waitFor((e) => e.data?.agentId === a.agentId);
    assert.equal(ev.type, 'agent_registered', 'core events are emitted with SDK (underscore) names');
  }
  await wild.waitFor((e) => e.type === 'agent_unregistered' && e.data?.agentId === a.agentId);
  await settle(c);
  for (const r of [under, dotted]) {
    assert.deepEqual([...new Set(r.events.map((e) => e.type))], ['agent_registered']);
  }
  const wt = new Set(wild.events.filter((e) => e.data?.agentId === a.agentId).map((e) => e.type));
  assert.deepEqual([...wt].sort(), ['agent_registered', 'agent_state_changed', 'agent_unregistered']);
  assert.ok(wild.events.every((e) => e.type.startsWith('agent_')), `wildcard leaked: ${wild.events.map((e) => e.type)}`);
  await c.disconnect();
});

btest('fromAgents and fromRoles filters', B, async () => {
  const c = await connectClient(B.url);
  const x = await connectAgent(B.url, { agentId: uid('fx'), role: 'fr-alpha' });
  const y = await connectAgent(B.url, { agentId: uid('fy'), role: 'fr-beta' });
  const fa = record(await c.subscribe({ fromAgents: [x.agentId] }));
  const fr = record(await c.subscribe({ fromRoles: ['fr-beta'] }));
  await x.busy();
  await y.busy();
  await x.send({ agent: y.agentId }, 'from x');
  await y.send({ agent: x.agentId }, 'from y');
  await fa.waitFor((e) => e.type === 'message_sent');
  await fr.waitFor((e) => e.type === 'message_sent');
  await settle(c);
  assert.ok(fa.events.length >= 2);
  assert.ok(fa.events.every((e) => e.source === x.agentId), JSON.stringify(fa.events.map((e) => e.source)));
  assert.ok(fa.events.some((e) => e.type === 'agent_state_changed'));
  assert.ok(fr.events.length >= 2);
  assert.ok(fr.events.every((e) => e.source === y.agentId), JSON.stringify(fr.events.map((e) => e.source)));
  await x.disconnect(); await y.disconnect(); await c.disconnect();
});

btest('scopes filter', B, async () => {
  const c = await connectClient(B.url);
  const a = await connectAgent(B.url, { agentId: uid('sf') });
  const s1 = uid('s1'); const s2 = uid('s2');
  await a.createScope({ scopeId: s1 });
  await a.createScope({ scopeId: s2 });
  const r = record(await c.subscribe({ scopes: [s1] }));
  await a.joinScope(s2);
  await a.joinScope(s1);
  await a.leaveScope(s2);
  await a.leaveScope(s1);
  await r.waitFor((e) => e.type === 'scope_member_left');
  await settle(c);
  assert.deepEqual(r.events.map((e) => [e.type, e.data.scopeId]), [['scope_member_joined', s1], ['scope_member_left', s1]]);
  await a.disconnect(); await c.disconnect();
});

btest('correlationIds filter (matches message events by message meta correlationId)', B, async () => {
  const c = await connectClient(B.url);
  const a = await connectAgent(B.url, { agentId: uid('cor') });
  const cid = uid('corr');
  const r = record(await c.subscribe({ correlationIds: [cid] }));
  const other = await c.send({ agent: a.agentId }, 1, { correlationId: 'other-corr' });
  const mine = await c.send({ agent: a.agentId }, 2, { correlationId: cid });
  await r.waitFor((e) => e.type === 'message_delivered' && e.data?.messageId === mine.messageId);
  await settle(c);
  assert.ok(r.events.length >= 1);
  assert.ok(r.events.every((e) => e.data?.messageId === mine.messageId), 'only the correlated message');
  assert.ok(!r.events.some((e) => e.data?.messageId === other.messageId));
  await a.disconnect(); await c.disconnect();
});

btest('metadataMatch filter: {} matches everything, a non-empty match requires data.metadata', B, async () => {
  const c = await connectClient(B.url);
  const empty = record(await c.subscribe({ eventTypes: ['agent_registered'], metadataMatch: {} }));
  const red = record(await c.subscribe({ eventTypes: ['agent_registered'], metadataMatch: { team: 'nobody-has-this' } }));
  const id = uid('mm');
  await c.callExtension('map/agents/register', { agentId: id, metadata: { team: 'red' } });
  await empty.waitFor((e) => e.data?.agentId === id);
  await settle(c);
  assert.equal(red.events.length, 0);
  await c.disconnect();
});

btest('combined filter keys are ANDed', B, async () => {
  const c = await connectClient(B.url);
  const a = await connectAgent(B.url, { agentId: uid('and') });
  const b = await connectAgent(B.url, { agentId: uid('and') });
  const r = record(await c.subscribe({ eventTypes: ['agent_state_changed'], fromAgents: [b.agentId] }));
  await a.busy();
  await b.busy();
  await a.send({ agent: b.agentId }, 1);
  await r.waitFor((e) => e.source === b.agentId);
  await settle(c);
  assert.deepEqual(r.events.map((e) => [e.type, e.source]), [['agent_state_changed', b.agentId]]);
  await a.disconnect(); await b.disconnect(); await c.disconnect();
});

btest('envelope: gapless sequenceNumber from 1, monotonic eventId == event.id, integer timestamps', B, async () => {
  const c = await connectClient(B.url);
  const prefix = uid('seq');
  const sub = await c.subscribe({ eventTypes: ['agent_registered', 'agent_unregistered'] });
  const r = record(sub);
  const made = await churn(B.url, 6, { prefix });
  await r.waitFor((e) => e.type === 'agent_unregistered' && e.data?.agentId === made.at(-1));
  await settle(c);
  const envs = r.envs;
  assert.ok(envs.length >= 12);
  envs.forEach((e, i) => {
    assert.equal(e.subscriptionId, sub.id);
    assert.equal(e.sequenceNumber, i + 1, `sequenceNumber gap at index ${i}`);
    assert.equal(typeof e.eventId, 'string');
    assert.equal(e.eventId, e.event.id, 'envelope eventId equals event.id');
    assert.ok(Number.isInteger(e.event.timestamp));
    if (e.timestamp !== undefined) assert.ok(Number.isInteger(e.timestamp));
    if (i > 0) assert.ok(envs[i - 1].eventId < e.eventId, `eventId not increasing: ${envs[i - 1].eventId} !< ${e.eventId}`);
  });
  assert.match(envs[0].eventId, /^[0-9A-HJKMNP-TV-Z]{26}$/, 'eventId is a ULID');
  assert.equal(sub.lastSequenceNumber, envs.length);
  await c.disconnect();
});

btest('two subscriptions on one connection: own ids and sequences, same eventIds', B, async () => {
  const c = await connectClient(B.url);
  const s1 = await c.subscribe({});
  const s2 = await c.subscribe({ eventTypes: ['agent_registered'] });
  assert.notEqual(s1.id, s2.id);
  const r1 = record(s1); const r2 = record(s2);
  const made = await churn(B.url, 3, { keep: false });
  await r2.waitFor((e) => e.data?.agentId === made[2]);
  await r1.waitFor((e) => e.type === 'agent_unregistered' && e.data?.agentId === made[2]);
  await settle(c);
  r1.envs.forEach((e, i) => { assert.equal(e.sequenceNumber, i + 1); assert.equal(e.subscriptionId, s1.id); });
  r2.envs.forEach((e, i) => { assert.equal(e.sequenceNumber, i + 1); assert.equal(e.subscriptionId, s2.id); });
  const ids1 = new Set(r1.envs.map((e) => e.eventId));
  for (const id of made) {
    const e2 = r2.envs.find((e) => e.event.data?.agentId === id);
    assert.ok(e2, `s2 saw ${id}`);
    assert.ok(ids1.has(e2.eventId), 'the same event carries the same eventId on both subscriptions');
  }
  await c.disconnect();
});

btest('subscribe with no filter ("params":{}) receives everything', B, async () => {
  const c = await connectClient(B.url);
  const r = record(await c.subscribe());
  const [id] = await churn(B.url, 1);
  await r.waitFor((e) => e.type === 'agent_unregistered' && e.data?.agentId === id);
  await c.disconnect();
});

btest('map/subscribe.ack is accepted silently (raw and via Subscription.ack())', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  const { subscriptionId } = await raw.rpc('map/subscribe', { filter: { eventTypes: ['agent_registered'] } });
  assert.equal(typeof subscriptionId, 'string');
  await churn(B.url, 2);
  const e1 = await raw.waitFor((f) => f.method === 'map/event');
  assert.equal(e1.params.sequenceNumber, 1);
  assert.equal(e1.params.subscriptionId, subscriptionId);
  raw.send({ jsonrpc: '2.0', method: 'map/subscribe.ack', params: { subscriptionId, upToSequence: 1 } });
  const e2 = await raw.waitFor((f) => f.method === 'map/event');
  assert.equal(e2.params.sequenceNumber, 2);
  await churn(B.url, 1);
  const e3 = await raw.waitFor((f) => f.method === 'map/event');
  assert.equal(e3.params.sequenceNumber, 3, 'events keep flowing after an ack');
  const ok = await raw.call('map/agents/list', {}, { id: 'after-ack' });
  assert.ok(ok.result);
  assert.equal(raw.frames.filter((f) => !f.method && f.id !== 1 && f.id !== 2 && f.id !== 'after-ack').length, 0, 'ack must not be answered');
  raw.close();

  const c = await connectClient(B.url);
  const sub = await c.subscribe({ eventTypes: ['agent_registered'] });
  assert.equal(sub.supportsAck, true);
  const r = record(sub);
  const [id] = await churn(B.url, 1);
  await r.waitFor((e) => e.data?.agentId === id);
  sub.ack();
  await settle(c);
  await c.disconnect();
});

btest('unsubscribe: result shape, then no more events; unknown id succeeds', B, async () => {
  const c = await connectClient(B.url);
  const sub = await c.subscribe({ eventTypes: ['agent_registered'] });
  const r = record(sub);
  const res = await c.callExtension('map/unsubscribe', { subscriptionId: sub.id });
  assert.equal(res.unsubscribed, true);
  assert.equal(res.subscription?.id, sub.id);
  assert.ok(Number.isInteger(res.subscription?.closedAt));
  await churn(B.url, 2);
  await settle(c, 300);
  assert.equal(r.envs.length, 0, 'no events after unsubscribe');
  const again = await c.callExtension('map/unsubscribe', { subscriptionId: sub.id });
  assert.equal(again.unsubscribed, true);
  const unknown = await c.callExtension('map/unsubscribe', { subscriptionId: 'never-existed' });
  assert.ok(unknown);
  // SDK path
  const sub2 = await c.subscribe({ eventTypes: ['agent_registered'] });
  const r2 = record(sub2);
  await sub2.unsubscribe();
  await churn(B.url, 1);
  await settle(c, 300);
  assert.equal(r2.envs.length, 0);
  await c.disconnect();
});

btest('replay: afterEventId, limit, hasMore paging, filter, replayAll', B, async () => {
  const c = await connectClient(B.url);
  const role = uid('rp-role');
  const live = record(await c.subscribe({ eventTypes: ['agent_registered'], fromRoles: [role] }));
  const made = await churn(B.url, 7, { role, keep: true });
  await live.waitFor((e) => e.data?.agentId === made.at(-1));
  const liveIds = live.envs.map((e) => e.eventId);
  assert.equal(liveIds.length, 7);
  const filter = { eventTypes: ['agent_registered'], fromRoles: [role] };
  // page from just before the first one: start after the first, pages of 2
  const pages = [];
  let after = liveIds[0];
  for (let i = 0; i < 10; i++) {
    const p = await c.replay({ afterEventId: after, limit: 2, filter });
    pages.push(p);
    assert.ok(Array.isArray(p.events));
    assert.equal(typeof p.hasMore, 'boolean');
    if (!p.events.length || !p.hasMore) break;
    after = p.events.at(-1).eventId;
  }
  const got = pages.flatMap((p) => p.events);
  assert.deepEqual(got.map((e) => e.eventId), liveIds.slice(1));
  assert.deepEqual(pages.map((p) => p.events.length), [2, 2, 2]);
  assert.deepEqual(pages.map((p) => p.hasMore), [true, true, false]);
  for (const e of got) {
    assert.equal(e.event.id, e.eventId);
    assert.equal(e.event.type, 'agent_registered');
    assert.ok(Number.isInteger(e.timestamp));
    assert.ok(made.includes(e.event.data.agentId));
  }
  // replayAll from the beginning with the same filter yields all 7 in order
  const all = [];
  for await (const e of c.replayAll({ filter, limit: 3 })) all.push(e.eventId);
  assert.deepEqual(all, liveIds);
  // exact page boundary: limit == remaining -> hasMore false
  const last = await c.replay({ afterEventId: liveIds[4], limit: 2, filter });
  assert.deepEqual(last.events.map((e) => e.eventId), liveIds.slice(5));
  assert.equal(last.hasMore, false);
  // fromTimestamp is inclusive
  const firstTs = live.envs[0].event.timestamp;
  const byTs = await c.replay({ fromTimestamp: firstTs, filter, limit: 100 });
  assert.deepEqual(byTs.events.map((e) => e.eventId), liveIds);
  await c.disconnect();
});

btest('map/structure/graph: nodes and parent-child edges', B, async (ctx) => {
  const b = await ctx.broker();
  const c = await connectClient(b.url);
  const root = await connectAgent(b.url, { agentId: 'root', role: 'lead' });
  await root.spawn({ agentId: 'c1' });
  await root.spawn({ agentId: 'c2' });
  await c.callExtension('map/agents/register', { agentId: 'gc', parent: 'c1' });
  await connectAgent(b.url, { agentId: 'loner' });
  const g = await c.getStructureGraph();
  assert.deepEqual(g.nodes.map((n) => n.id).sort(), ['c1', 'c2', 'gc', 'loner', 'root']);
  const edges = g.edges.filter((e) => e.type === 'parent-child').map((e) => `${e.from}>${e.to}`).sort();
  assert.deepEqual(edges, ['c1>gc', 'root>c1', 'root>c2']);
  const sub = await c.getStructureGraph({ rootAgentId: 'root', depth: 1 });
  assert.deepEqual(sub.nodes.map((n) => n.id).sort(), ['c1', 'c2', 'root']);
  const sub2 = await c.getStructureGraph({ rootAgentId: 'c1' });
  assert.deepEqual(sub2.nodes.map((n) => n.id).sort(), ['c1', 'gc']);
  const e = await rejects(c.getStructureGraph({ rootAgentId: 'nope' }));
  assert.equal(e.code, 2001);
});

btest('map/inject: delivered to the target agent as a map/message', B, async () => {
  const c = await connectClient(B.url);
  const a = await connectAgent(B.url, { agentId: uid('inj') });
  const box = inbox(a);
  const res = await c.inject(a.agentId, { steer: 'left' }, 'interrupt');
  assert.equal(res.injected, true);
  assert.equal(res.delivery, 'message');
  const m = await box.waitFor((x) => x.payload?.steer === 'left');
  assert.equal(m.from, c.connectResult.participantId);
  assert.deepEqual(m.to, { agent: a.agentId });
  assert.equal(m.meta?.priority, 'urgent');
  const res2 = await c.inject(a.agentId, 'plain');
  assert.equal(res2.injected, true);
  const m2 = await box.waitFor((x) => x.payload === 'plain');
  assert.equal(m2.meta?.priority, 'high');
  const e = await rejects(c.inject('no-such-agent-inj', 'x'));
  assert.equal(e.code, 2001);
  await a.disconnect(); await c.disconnect();
});

btest('excludeOwnEvents option is honoured', B, async () => {
  const a = await connectAgent(B.url, { agentId: uid('ex') });
  const c = await connectClient(B.url);
  const raw = await RawWs.open(B.url);
  const conn = await raw.connect();
  await raw.rpc('map/subscribe', { filter: { eventTypes: ['message_sent'] }, options: { excludeOwnEvents: true } });
  await raw.rpc('map/send', { to: { agent: a.agentId }, payload: 'mine' });
  const other = await c.send({ agent: a.agentId }, 'theirs');
  const ev = await raw.waitFor((f) => f.method === 'map/event');
  assert.equal(ev.params.event.data.messageId, other.messageId);
  assert.notEqual(ev.params.event.source, conn.participantId);
  raw.close(); await a.disconnect(); await c.disconnect();
});
