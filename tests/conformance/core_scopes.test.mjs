// MAP.md §7: scopes.
import assert from 'node:assert/strict';
import {
  useBroker, btest, connectClient, connectAgent, record, rejects, settle, uid,
} from './lib/broker.mjs';

const B = useBroker();

btest('create (chosen id, fields) emits scope_created; get returns it', B, async () => {
  const obs = await connectClient(B.url);
  const rec = record(await obs.subscribe({ eventTypes: ['scope_created'] }));
  const a = await connectAgent(B.url, { agentId: uid('creator') });
  const sid = uid('scope');
  const s = await a.createScope({ scopeId: sid, name: 'Team', description: 'the team', metadata: { k: 'v' } });
  assert.equal(s.id, sid);
  assert.equal(s.name, 'Team');
  assert.equal(s.description, 'the team');
  assert.deepEqual(s.metadata, { k: 'v' });
  const ev = await rec.waitFor((e) => e.data?.scopeId === sid);
  assert.equal(ev.type, 'scope_created');
  assert.equal(ev.data.name, 'Team');
  assert.equal(ev.source, a.agentId);
  const got = await obs.getScope(sid);
  assert.equal(got.id, sid);
  assert.equal(got.name, 'Team');
  await a.disconnect();
  await obs.disconnect();
});

btest('create without scopeId generates an id; clients may create scopes too', B, async () => {
  const c = await connectClient(B.url);
  const r = await c.callExtension('map/scopes/create', { name: 'anon' });
  assert.equal(typeof r.scope.id, 'string');
  assert.ok(r.scope.id.length > 0);
  assert.equal(r.scope.name, 'anon');
  await c.disconnect();
});

btest('create duplicate scopeId -> -32602; unknown parent -> 2002; nested parent ok', B, async () => {
  const c = await connectClient(B.url);
  const sid = uid('dup');
  await c.callExtension('map/scopes/create', { scopeId: sid });
  const e = await rejects(c.callExtension('map/scopes/create', { scopeId: sid }));
  assert.equal(e.code, -32602);
  const e2 = await rejects(c.callExtension('map/scopes/create', { scopeId: uid('kid'), parent: 'no-such-scope' }));
  assert.equal(e2.code, 2002);
  assert.equal(e2.data?.category, 'routing');
  const kid = uid('kid');
  const r = await c.callExtension('map/scopes/create', { scopeId: kid, parent: sid });
  assert.equal(r.scope.parent, sid);
  const list = await c.listScopes({ parent: sid });
  assert.deepEqual(list.scopes.map((s) => s.id), [kid]);
  await c.disconnect();
});

btest('get / members / delete on unknown scope -> 2002', B, async () => {
  const c = await connectClient(B.url);
  for (const p of [c.getScope('nope-scope'), c.getScopeMembers('nope-scope'), c.callExtension('map/scopes/delete', { scopeId: 'nope-scope' })]) {
    const e = await rejects(p);
    assert.equal(e.code, 2002);
  }
  await c.disconnect();
});

btest('list returns created scopes (params absent and {})', B, async () => {
  const c = await connectClient(B.url);
  const s1 = uid('l1'); const s2 = uid('l2');
  await c.callExtension('map/scopes/create', { scopeId: s1 });
  await c.callExtension('map/scopes/create', { scopeId: s2 });
  for (const r of [await c.listScopes(), await c.listScopes({})]) {
    const got = r.scopes.map((s) => s.id);
    assert.ok(got.includes(s1) && got.includes(s2), JSON.stringify(got));
  }
  await c.disconnect();
});

btest('join (idempotent, one event), members, agent.scopes, leave, events', B, async () => {
  const obs = await connectClient(B.url);
  const sid = uid('room');
  const rec = record(await obs.subscribe({ eventTypes: ['scope_member_joined', 'scope_member_left'], scopes: [sid] }));
  const a = await connectAgent(B.url, { agentId: uid('joiner') });
  const b = await connectAgent(B.url, { agentId: uid('joiner') });
  await a.createScope({ scopeId: sid });
  const j = await a.joinScope(sid);
  assert.equal(j.scope.id, sid);
  assert.equal(j.agent.id, a.agentId);
  assert.equal(j.joined, true);
  assert.ok(j.agent.scopes.includes(sid));
  const j2 = await a.joinScope(sid); // idempotent
  assert.equal(j2.scope.id, sid);
  await b.joinScope(sid);
  const ev = await rec.waitFor((e) => e.type === 'scope_member_joined' && e.data.agentId === a.agentId);
  assert.equal(ev.data.scopeId, sid);
  assert.equal(ev.source, a.agentId);
  await rec.waitFor((e) => e.type === 'scope_member_joined' && e.data.agentId === b.agentId);
  const m = await obs.getScopeMembers(sid);
  assert.deepEqual([...m.members].sort(), [a.agentId, b.agentId].sort());
  const ga = await obs.getAgent(a.agentId);
  assert.deepEqual(ga.agent.scopes, [sid]);
  const l = await a.leaveScope(sid);
  assert.equal(l.scope.id, sid);
  assert.equal(l.agent.id, a.agentId);
  assert.equal(l.left, true);
  const evl = await rec.waitFor((e) => e.type === 'scope_member_left' && e.data.agentId === a.agentId);
  assert.equal(evl.data.scopeId, sid);
  assert.deepEqual((await obs.getScopeMembers(sid)).members, [b.agentId]);
  assert.deepEqual((await obs.getAgent(a.agentId)).agent.scopes ?? [], []);
  await settle(obs);
  const joins = rec.events.filter((e) => e.type === 'scope_member_joined' && e.data.agentId === a.agentId);
  assert.equal(joins.length, 1, 're-join must not emit a second scope_member_joined');
  await a.disconnect();
  await b.disconnect();
  await obs.disconnect();
});

btest('join/leave errors: unknown scope 2002, unknown agent 2001', B, async () => {
  const c = await connectClient(B.url);
  const a = await connectAgent(B.url, { agentId: uid('j') });
  // an unknown scope is created on demand (--auto-create-scopes, on by default); one whose id cannot be
  // a scope id stays 2002 (tests/interop covers the strict mode, --no-auto-create-scopes)
  const e = await rejects(a.joinScope('no such scope j'));
  assert.equal(e.code, 2002);
  const sid = uid('s');
  await c.callExtension('map/scopes/create', { scopeId: sid });
  const e2 = await rejects(c.callExtension('map/scopes/join', { scopeId: sid, agentId: 'no-such-agent-j' }));
  assert.equal(e2.code, 2001);
  const e3 = await rejects(a.leaveScope('no-such-scope-j'));
  assert.equal(e3.code, 2002);
  await a.disconnect();
  await c.disconnect();
});

btest('joinPolicy invite refuses a plain join with 1003', B, async () => {
  const a = await connectAgent(B.url, { agentId: uid('inv') });
  const sid = uid('closed');
  await a.createScope({ scopeId: sid, joinPolicy: 'invite' });
  const e = await rejects(a.joinScope(sid));
  assert.equal(e.code, 1003);
  await a.disconnect();
});

btest('register with scopes joins immediately (scope_member_joined), unregister leaves', B, async () => {
  const c = await connectClient(B.url);
  const sid = uid('auto');
  await c.callExtension('map/scopes/create', { scopeId: sid });
  const rec = record(await c.subscribe({ eventTypes: ['scope_member_joined', 'scope_member_left'], scopes: [sid] }));
  const a = await connectAgent(B.url, { agentId: uid('sc'), scopes: [sid] });
  await rec.waitFor((e) => e.type === 'scope_member_joined' && e.data.agentId === a.agentId);
  assert.deepEqual((await c.getScopeMembers(sid)).members, [a.agentId]);
  await a.disconnect();
  await rec.waitFor((e) => e.type === 'scope_member_left' && e.data.agentId === a.agentId);
  assert.deepEqual((await c.getScopeMembers(sid)).members, []);
  await c.disconnect();
});

btest('delete: result {scope, deleted:true}, scope_deleted event, gone afterwards', B, async () => {
  const c = await connectClient(B.url);
  const sid = uid('del');
  const rec = record(await c.subscribe({ eventTypes: ['scope_deleted'] }));
  await c.callExtension('map/scopes/create', { scopeId: sid, name: 'doomed' });
  const a = await connectAgent(B.url, { agentId: uid('m') });
  await a.joinScope(sid);
  const d = await c.callExtension('map/scopes/delete', { scopeId: sid });
  assert.equal(d.deleted, true);
  assert.equal(d.scope.id, sid);
  const ev = await rec.waitFor((e) => e.data?.scopeId === sid);
  assert.equal(ev.type, 'scope_deleted');
  const e = await rejects(c.getScope(sid));
  assert.equal(e.code, 2002);
  assert.ok(!(await c.listScopes()).scopes.some((s) => s.id === sid));
  const ga = await c.getAgent(a.agentId);
  assert.ok(!(ga.agent.scopes ?? []).includes(sid), 'deleted scope removed from agent.scopes');
  await a.disconnect();
  await c.disconnect();
});
