// MAP.md §6: agent registry, lineage, state machine, lifecycle control, agent_* events.
import assert from 'node:assert/strict';
import {
  useBroker, btest, connectClient, connectAgent, record, rejects, settle, uid, sleep,
} from './lib/broker.mjs';

const B = useBroker();

const ids = (arr) => arr.map((a) => (typeof a === 'string' ? a : a.id)).sort();

btest('register via AgentConnection: Agent object fields and agent_registered event', B, async () => {
  const obs = await connectClient(B.url);
  const rec = record(await obs.subscribe({ eventTypes: ['agent_registered'] }));
  const id = uid('reg');
  const a = await connectAgent(B.url, { agentId: id, name: 'Reg', role: 'worker', visibility: 'public' });
  const ag = a.registered;
  assert.equal(ag.id, id);
  assert.equal(ag.name, 'Reg');
  assert.equal(ag.role, 'worker');
  assert.equal(ag.state, 'registered');
  assert.equal(ag.ownerId, a.connectResult.participantId);
  const ev = await rec.waitFor((e) => e.data?.agentId === id);
  assert.equal(ev.type, 'agent_registered');
  assert.equal(ev.source, id);
  assert.equal(ev.data.name, 'Reg');
  assert.equal(ev.data.role, 'worker');
  assert.equal(ev.data.ownerId, a.connectResult.participantId);
  assert.equal(ev.data.agent?.id, id);
  const got = await obs.getAgent(id);
  assert.equal(got.agent.id, id);
  assert.equal(got.agent.state, 'registered');
  assert.ok('ownerId' in got.agent);
  await a.disconnect();
  await obs.disconnect();
});

btest('register by a client (raw call) with metadata, unregister result {agent, unregistered:true}', B, async () => {
  const c = await connectClient(B.url);
  const rec = record(await c.subscribe({ eventTypes: ['agent_unregistered'] }));
  const id = uid('creg');
  const r = await c.callExtension('map/agents/register', { agentId: id, name: 'n', metadata: { team: 'red', n: 1 } });
  assert.equal(r.agent.id, id);
  assert.deepEqual(r.agent.metadata, { team: 'red', n: 1 });
  assert.equal(r.agent.ownerId, c.connectResult.participantId);
  const u = await c.callExtension('map/agents/unregister', { agentId: id, reason: 'done' });
  assert.equal(u.unregistered, true);
  assert.equal(u.agent.id, id);
  const ev = await rec.waitFor((e) => e.data?.agentId === id);
  assert.equal(ev.source, id);
  assert.equal(ev.data.reason, 'done');
  const e = await rejects(c.getAgent(id), 'get after unregister');
  assert.equal(e.code, 2001);
  const e2 = await rejects(c.callExtension('map/agents/unregister', { agentId: id }), 'double unregister');
  assert.equal(e2.code, 2001);
  await c.disconnect();
});

btest('register with an unknown parent -> 2001; without agentId -> generated id', B, async () => {
  const c = await connectClient(B.url);
  const e = await rejects(c.callExtension('map/agents/register', { agentId: uid('orph'), parent: 'no-such-parent' }));
  assert.equal(e.code, 2001);
  const r = await c.callExtension('map/agents/register', { name: 'gen' });
  assert.equal(typeof r.agent.id, 'string');
  assert.ok(r.agent.id.length > 0);
  await c.disconnect();
});

btest('AgentConnection.disconnect() unregisters (agent_unregistered, gone from list)', B, async () => {
  const obs = await connectClient(B.url);
  const rec = record(await obs.subscribe({ eventTypes: ['agent_unregistered'] }));
  const id = uid('bye');
  const a = await connectAgent(B.url, { agentId: id });
  await a.disconnect('finished');
  const ev = await rec.waitFor((e) => e.data?.agentId === id);
  assert.equal(ev.type, 'agent_unregistered');
  const list = await obs.listAgents();
  assert.ok(!list.agents.some((x) => x.id === id));
  await obs.disconnect();
});

btest('unregister of an agent owned by another connection -> 1003', B, async () => {
  const id = uid('own');
  const a = await connectAgent(B.url, { agentId: id });
  const c = await connectClient(B.url);
  const e = await rejects(c.callExtension('map/agents/unregister', { agentId: id }));
  assert.equal(e.code, 1003);
  assert.equal(e.data?.category, 'auth');
  await a.disconnect();
  await c.disconnect();
});

// A fresh broker so list filters can be checked against exact sets.
async function topology(ctx) {
  const b = await ctx.broker();
  const c = await connectClient(b.url, { name: 'viewer' });
  const A = await connectAgent(b.url, { agentId: 'a', name: 'A', role: 'coord' });
  await A.createScope({ scopeId: 's1', name: 'S1' });
  const a1 = await A.spawn({ agentId: 'a1', name: 'A1', role: 'worker', scopes: ['s1'] });
  const a2 = await A.spawn({ agentId: 'a2', name: 'A2', role: 'worker' });
  const gc = await c.callExtension('map/agents/register', { agentId: 'a1x', name: 'A1X', role: 'helper', parent: 'a1' });
  const Bk = await connectAgent(b.url, { agentId: 'b', name: 'B', role: 'reviewer', scopes: ['s1'] });
  return { b, c, A, a1, a2, gc, Bk };
}

btest('spawn: parent lineage, ownerId = spawning connection, state registered', B, async (ctx) => {
  const { c, A, a1, gc } = await topology(ctx);
  assert.equal(a1.agent.id, 'a1');
  assert.equal(a1.agent.parent, 'a');
  assert.equal(a1.agent.ownerId, A.connectResult.participantId);
  assert.equal(a1.agent.state, 'registered');
  assert.equal(a1.agent.role, 'worker');
  assert.deepEqual(a1.agent.scopes, ['s1']);
  assert.equal(gc.agent.parent, 'a1');
  assert.equal(gc.agent.ownerId, c.connectResult.participantId);
  // spawn under an unknown parent / with a duplicate id
  const e = await rejects(c.callExtension('map/agents/spawn', { agentId: 'zz', parent: 'nobody' }));
  assert.equal(e.code, 2001);
  const e2 = await rejects(A.spawn({ agentId: 'a1' }));
  assert.equal(e2.code, 3000);
});

btest('spawn emits agent_registered with parent and ownerId', B, async () => {
  const obs = await connectClient(B.url);
  const rec = record(await obs.subscribe({ eventTypes: ['agent_registered'] }));
  const pid = uid('par');
  const P = await connectAgent(B.url, { agentId: pid });
  const cid = uid('kid');
  await P.spawn({ agentId: cid, name: 'kid', role: 'worker' });
  const ev = await rec.waitFor((e) => e.data?.agentId === cid);
  assert.equal(ev.data.parent, pid);
  assert.equal(ev.data.ownerId, P.connectResult.participantId);
  assert.equal(ev.source, cid);
  await P.disconnect();
  await obs.disconnect();
});

btest('map/agents/list: every filter key (states, roles, scopes, parent, hasChildren, ownerId)', B, async (ctx) => {
  const { c, A, Bk } = await topology(ctx);
  const all = ['a', 'a1', 'a1x', 'a2', 'b'];
  const L = async (filter) => ids((await c.listAgents(filter === undefined ? undefined : { filter })).agents);
  assert.deepEqual(await L(), all);
  assert.deepEqual(await L({}), all);
  await Bk.busy();
  assert.deepEqual(await L({ states: ['busy'] }), ['b']);
  assert.deepEqual(await L({ states: ['registered'] }), ['a', 'a1', 'a1x', 'a2']);
  assert.deepEqual(await L({ states: ['busy', 'registered'] }), all);
  assert.deepEqual(await L({ states: [] }), all);
  assert.deepEqual(await L({ roles: ['worker'] }), ['a1', 'a2']);
  assert.deepEqual(await L({ roles: ['worker', 'reviewer'] }), ['a1', 'a2', 'b']);
  assert.deepEqual(await L({ roles: ['nobody'] }), []);
  assert.deepEqual(await L({ scopes: ['s1'] }), ['a1', 'b']);
  assert.deepEqual(await L({ scopes: ['nope'] }), []);
  assert.deepEqual(await L({ parent: 'a' }), ['a1', 'a2']);
  assert.deepEqual(await L({ parent: 'a1' }), ['a1x']);
  assert.deepEqual(await L({ hasChildren: true }), ['a', 'a1']);
  assert.deepEqual(await L({ hasChildren: false }), ['a1x', 'a2', 'b']);
  assert.deepEqual(await L({ ownerId: A.connectResult.participantId }), ['a', 'a1', 'a2']);
  assert.deepEqual(await L({ ownerId: c.connectResult.participantId }), ['a1x']);
  assert.deepEqual(await L({ ownerId: Bk.connectResult.participantId }), ['b']);
  // AND across keys
  assert.deepEqual(await L({ roles: ['worker'], scopes: ['s1'] }), ['a1']);
  assert.deepEqual(await L({ roles: ['worker'], states: ['busy'] }), []);
});

btest('map/agents/get with include: parent, children, siblings, ancestors, descendants', B, async (ctx) => {
  const { c } = await topology(ctx);
  const g = await c.getAgent('a1', { include: { parent: true, children: true, siblings: true, ancestors: true, descendants: true } });
  assert.equal(g.agent.id, 'a1');
  assert.equal(g.parent?.id, 'a');
  assert.deepEqual(ids(g.children), ['a1x']);
  assert.deepEqual(ids(g.siblings), ['a2']);
  assert.deepEqual(ids(g.ancestors), ['a']);
  assert.deepEqual(ids(g.descendants), ['a1x']);
  const g2 = await c.getAgent('a1x', { include: { ancestors: true } });
  assert.deepEqual(ids(g2.ancestors), ['a', 'a1']);
  const g3 = await c.getAgent('a', { include: { descendants: true, children: true } });
  assert.deepEqual(ids(g3.descendants), ['a1', 'a1x', 'a2']);
  assert.deepEqual(ids(g3.children), ['a1', 'a2']);
  // without include nothing extra
  const g4 = await c.getAgent('a1');
  assert.equal(g4.agent.id, 'a1');
  assert.equal(g4.children, undefined);
  assert.equal(g4.descendants, undefined);
  const e = await rejects(c.getAgent('nope'));
  assert.equal(e.code, 2001);
});

btest('update: state machine transitions, agent_state_changed, invalid transition 3001', B, async () => {
  const obs = await connectClient(B.url);
  const id = uid('sm');
  const rec = record(await obs.subscribe({ eventTypes: ['agent_state_changed'], fromAgents: [id] }));
  const a = await connectAgent(B.url, { agentId: id });
  let ag = await a.busy();
  assert.equal(ag.state, 'busy');
  let ev = await rec.waitFor((e) => e.data?.newState === 'busy');
  assert.equal(ev.data.agentId, id);
  assert.equal(ev.data.previousState, 'registered');
  assert.equal(ev.source, id);
  ag = await a.idle();
  assert.equal(ag.state, 'idle');
  ev = await rec.waitFor((e) => e.data?.newState === 'idle');
  assert.equal(ev.data.previousState, 'busy');
  // same-state update: no-op, no event
  ag = await a.idle();
  assert.equal(ag.state, 'idle');
  ag = await a.updateState('x-thinking');
  assert.equal(ag.state, 'x-thinking');
  ag = await a.updateState('busy');
  assert.equal(ag.state, 'busy');
  await settle(obs);
  assert.deepEqual(rec.events.map((e) => [e.data.previousState, e.data.newState]),
    [['registered', 'busy'], ['busy', 'idle'], ['idle', 'x-thinking'], ['x-thinking', 'busy']]);
  ag = await a.updateState('stopped');
  assert.equal(ag.state, 'stopped');
  const e = await rejects(a.updateState('busy'), 'stopped -> busy');
  assert.equal(e.code, 3001);
  assert.equal(e.data?.category, 'agent');
  const e2 = await rejects(a.updateState('idle'), 'stopped -> idle');
  assert.equal(e2.code, 3001);
  const g = await obs.getAgent(id);
  assert.equal(g.agent.state, 'stopped');
  await obs.disconnect();
});

btest('update: unknown agent 2001, invalid state name rejected', B, async () => {
  const c = await connectClient(B.url);
  const e = await rejects(c.callExtension('map/agents/update', { agentId: 'ghost-agent', state: 'busy' }));
  assert.equal(e.code, 2001);
  const a = await connectAgent(B.url, { agentId: uid('badstate') });
  const e2 = await rejects(a.updateState('flying'));
  assert.ok([3001, -32602].includes(e2.code), `code ${e2.code}`);
  await a.disconnect();
  await c.disconnect();
});

btest('update: metadata is merged', B, async () => {
  const a = await connectAgent(B.url, { agentId: uid('meta') });
  let ag = await a.updateMetadata({ a: 1, b: { x: 1 } });
  assert.deepEqual(ag.metadata, { a: 1, b: { x: 1 } });
  ag = await a.updateMetadata({ c: 3 });
  assert.deepEqual(ag.metadata, { a: 1, b: { x: 1 }, c: 3 });
  ag = await a.updateMetadata({ a: 2 });
  assert.deepEqual(ag.metadata, { a: 2, b: { x: 1 }, c: 3 });
  assert.equal(ag.state, 'registered', 'metadata update does not change state');
  await a.disconnect();
});

btest('suspend / resume / stop with results and agent_state_changed events', B, async () => {
  const ctl = await connectClient(B.url);
  const id = uid('life');
  const rec = record(await ctl.subscribe({ eventTypes: ['agent_state_changed'], fromAgents: [id] }));
  const a = await connectAgent(B.url, { agentId: id });
  await a.busy();
  const s = await ctl.suspendAgent(id, 'pause please');
  assert.equal(s.suspended, true);
  assert.equal(s.agent?.state, 'suspended');
  let ev = await rec.waitFor((e) => e.data?.newState === 'suspended');
  assert.equal(ev.data.previousState, 'busy');
  const r = await ctl.resumeAgent(id);
  assert.equal(r.resumed, true);
  assert.equal(r.agent?.state, 'busy', 'resume returns to the previous state');
  ev = await rec.waitFor((e) => e.data?.previousState === 'suspended');
  assert.equal(ev.data.newState, 'busy');
  // resume when not suspended
  const e = await rejects(ctl.resumeAgent(id));
  assert.equal(e.code, 3001);
  const st = await ctl.stopAgent(id, { reason: 'enough' });
  assert.equal(st.stopping, true);
  assert.equal(st.agent?.state, 'stopping');
  await rec.waitFor((e) => e.data?.newState === 'stopping');
  // stopping -> busy is invalid, stopping -> stopped is fine
  const e2 = await rejects(a.updateState('busy'));
  assert.equal(e2.code, 3001);
  const ag = await a.updateState('stopped');
  assert.equal(ag.state, 'stopped');
  // suspending a stopped agent is invalid
  const e3 = await rejects(ctl.suspendAgent(id));
  assert.ok([3001, 3003].includes(e3.code), `code ${e3.code}`);
  const e4 = await rejects(ctl.stopAgent('ghost-agent-2'));
  assert.equal(e4.code, 2001);
  const e5 = await rejects(ctl.suspendAgent('ghost-agent-2'));
  assert.equal(e5.code, 2001);
  const e6 = await rejects(ctl.resumeAgent('ghost-agent-2'));
  assert.equal(e6.code, 2001);
  await ctl.disconnect();
});

btest('stop with force: agent ends up stopped (or unregistered)', B, async () => {
  const ctl = await connectClient(B.url);
  const id = uid('force');
  const rec = record(await ctl.subscribe({ eventTypes: ['agent_state_changed', 'agent_unregistered'], fromAgents: [id] }));
  const a = await connectAgent(B.url, { agentId: id });
  const st = await ctl.stopAgent(id, { force: true });
  assert.equal(typeof st.stopping, 'boolean');
  const ev = await rec.waitFor((e) => e.type === 'agent_unregistered' || e.data?.newState === 'stopped');
  assert.ok(ev);
  const list = await ctl.listAgents();
  const still = list.agents.find((x) => x.id === id);
  if (still) assert.equal(still.state, 'stopped');
  await a.disconnect().catch(() => {});
  await ctl.disconnect();
});

btest('socket drop of an agent connection eventually unregisters or keeps it resumable, never crashes', B, async () => {
  const obs = await connectClient(B.url);
  const id = uid('drop');
  const a = await connectAgent(B.url, { agentId: id });
  a.ws.terminate();
  await sleep(200);
  const list = await obs.listAgents();
  assert.ok(Array.isArray(list.agents));
  await obs.disconnect();
});
