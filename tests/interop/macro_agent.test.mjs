// macro-agent@0.2.4's MAP sidecar (createMAPSidecar) as shipped against
// mapbroker: anonymous and with ?token= in the URL, worker registration,
// events and tasks to its scope, mail/turn (text/plain), mail/turn.received.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, after } from 'node:test';
import {
  startBroker, btest, connectAgent, connectClient, mailbox, withTimeout, until, T, closeAll, RawWs,
  macroAgent, privateHome, logSync,
} from './lib.mjs';

const home = privateHome();
const { createMAPSidecar } = await macroAgent();
const KEY = 'mk-interop-9f3a51c7d2e84b06';
const HUB = { method: 'api-key', credential: 'hub-key' };
const brokers = {};
const holder = { get broker() { return brokers.open; } };

before(async () => {
  const tokens = path.join(home, 'tokens.txt');
  fs.writeFileSync(tokens, `${KEY} swarm-principal\nhub-key hub-principal operator\nout-key outsider-principal\n`, { mode: 0o600 });
  brokers.open = await startBroker();
  brokers.auth = await startBroker({ args: ['--tokens', tokens], logLevel: 'debug' }); // debug: the URL token is not even there
});
after(async () => {
  await closeAll();
  // a clean exit: under ASan/UBSan a leak or a sanitizer report makes it non-zero
  for (const b of Object.values(brokers)) assert.deepEqual(await b.stop(), { code: 0, sig: null }, b.stderr().slice(-4000));
});

/** The host side macro-agent wires into its sidecar: the lifecycle source and the local inbox it forwards hub mail to. */
function hostDeps() {
  const d = {
    lifecycle: null,
    forwarded: [],
    agentManager: { onLifecycleEvent(cb) { d.lifecycle = cb; return () => { d.lifecycle = null; }; } },
    agentStore: {},
    inboxAdapter: {
      async registerAgent() {},
      async send(from, to, content, opts) { d.forwarded.push({ from, to, content, opts }); },
    },
    tasksAdapter: {},
  };
  return d;
}

const sidecars = [];
async function startSidecar(url, config = {}) {
  const deps = hostDeps();
  const sc = createMAPSidecar(deps, { server: url, reconnection: { enabled: false }, reconnectIntervalMs: 3600000, ...config });
  sidecars.push(sc);
  await withTimeout(sc.start(), T, 'sidecar.start');
  return { sc, deps };
}
after(async () => { for (const s of sidecars) await s.stop().catch(() => {}); });

async function agentsOf(url, auth) {
  const c = await connectClient(url, auth ? { connect: { auth } } : {});
  return (await c.listAgents({})).agents;
}

btest('macro-agent sidecar connects anonymously and registers into swarm:macro-agent (created on demand)', holder, async () => {
  const { sc } = await startSidecar(brokers.open.url);
  assert.equal(sc.connected, true, 'sidecar did not connect ("Failed to connect to MAP hub")');
  const side = (await agentsOf(brokers.open.url)).find((a) => a.name === 'macro-agent-sidecar');
  assert.ok(side, 'sidecar agent registered');
  assert.equal(side.role, 'sidecar');
  assert.deepEqual(side.scopes, ['swarm:macro-agent']);
  assert.equal(side.metadata?.canHostAcp, true, 'updateMetadata reached the broker');
});

btest('macro-agent sidecar authenticates with ?token= in the URL; the key is never logged', () => [brokers.auth], async () => {
  const mark = brokers.auth.mark();
  const { sc } = await startSidecar(brokers.auth.url, { token: KEY, agentName: 'tok-sidecar' });
  assert.equal(sc.connected, true);
  const side = (await agentsOf(brokers.auth.url, { method: 'api-key', credential: 'hub-key' })).find((a) => a.name === 'tok-sidecar');
  assert.ok(side, 'registered under its token');
  const log = (await logSync(brokers.auth, HUB)).slice(mark);
  assert.match(log, /authenticated/);
  assert.ok(!log.includes(KEY), 'the URL token appears in the broker log');
});

btest('pair: a wrong ?token= is refused (auth error) while the right one on the next socket works', () => [brokers.auth], async () => {
  const bad = await RawWs.open(`${brokers.auth.url}ws/map?token=not-a-key`);
  const r = await bad.call('map/connect', { protocolVersion: 1, participantType: 'agent', name: 'x' });
  assert.ok(r.result?.authRequired, `expected authRequired, got ${r.__raw}`);
  assert.equal(r.result.error?.code, 1001, r.__raw);
  const reg = await bad.call('map/agents/register', { name: 'x' });
  assert.equal(reg.error?.code, 1000, 'nothing but connect/authenticate before auth');
  const good = await RawWs.open(`${brokers.auth.url}ws/map?access_token=${KEY}`);
  const ok = await good.call('map/connect', { protocolVersion: 1, participantType: 'agent', name: 'y' });
  assert.equal(ok.result?.principal?.id, 'swarm-principal', ok.__raw);
  assert.ok(!(await logSync(brokers.auth, HUB)).includes('not-a-key'), 'a rejected URL token appears in the log');
});

btest('macro-agent registers its workers and publishes tasks and events to its scope', holder, async () => {
  const { sc, deps } = await startSidecar(brokers.open.url, { scope: 'swarm:w', agentName: 'w-sidecar' });
  const watcher = await connectAgent(brokers.open.url, { name: 'watcher', scopes: ['swarm:w'] });
  const box = await mailbox(watcher);
  deps.lifecycle({ type: 'spawned', agent: { id: 'local-w1', name: 'worker-1', role: 'worker', task_id: 'task-7', task: 'build it' } });
  const t = await box.next();
  assert.equal(t.payload.type, 'task.created');
  assert.deepEqual(t.payload.task, { id: 'task-7', title: 'build it', status: 'open', assignee: 'local-w1' });
  const w = await until(async () => (await agentsOf(brokers.open.url)).find((a) => a.name === 'worker-1'), { label: 'worker registered' });
  assert.equal(w.role, 'worker');
  assert.equal(w.metadata?.peerAgentId, 'local-w1');
  await sc.emitEvent({ type: 'agent.progress', pct: 50 });
  const e = await box.next();
  assert.deepEqual(e.payload, { type: 'agent.progress', pct: 50, _origin: 'macro-agent' });
  deps.lifecycle({ type: 'stopped', agent: { id: 'local-w1', task_id: 'task-7' }, reason: 'completed' });
  const s1 = await box.next();
  assert.equal(s1.payload.type, 'task.status');
  await until(async () => !(await agentsOf(brokers.open.url)).find((a) => a.name === 'worker-1'), { label: 'worker unregistered' });
});

async function conversationWith(url, sidecarName) {
  const side = (await agentsOf(url)).find((a) => a.name === sidecarName);
  const hub = await connectAgent(url, { name: `hub-${sidecarName}` });
  const conv = (await hub.callExtension('mail/create', { subject: 'interop', initialParticipants: [{ id: side.id, role: 'assistant' }] })).conversation;
  return { side, hub, conv };
}

btest('macro-agent postMailTurn (contentType text/plain, a notification) is recorded as a text turn', holder, async () => {
  const { sc } = await startSidecar(brokers.open.url, { agentName: 'mail-sidecar' });
  const { side, hub, conv } = await conversationWith(brokers.open.url, 'mail-sidecar');
  const mark = brokers.open.mark();
  await sc.postMailTurn(conv.id, side.id, 'plain words');
  const turns = await until(async () => {
    const r = await hub.callExtension('mail/turns/list', { conversationId: conv.id });
    return r.turns.length ? r.turns : null;
  }, { label: 'turn recorded' });
  assert.equal(turns[0].participant, side.id);
  assert.equal(turns[0].contentType, 'text');
  assert.deepEqual(turns[0].content, 'plain words');
  assert.match((await logSync(brokers.open)).slice(mark), /compat: contentType "text\/plain" taken as "text"/);
});

btest('macro-agent receives mail/turn.received for a turn another participant posts', holder, async () => {
  const { deps } = await startSidecar(brokers.open.url, { agentName: 'push-sidecar' });
  const { hub, conv } = await conversationWith(brokers.open.url, 'push-sidecar');
  const t = (await hub.callExtension('mail/turn', {
    conversationId: conv.id, contentType: 'data', importance: 'high',
    content: { type: 'x-dispatch/work', body: { prompt: 'do the thing', taskId: 't1' } },
  })).turn;
  assert.equal(t.importance, 'high');
  const bad = await hub.callExtension('mail/turn', { conversationId: conv.id, contentType: 'text', content: 'x', importance: 'loud' })
    .then(() => null, (e) => e);
  assert.equal(bad?.code, -32602);
  assert.equal(bad?.data?.field, 'importance');
  await until(() => deps.forwarded.length, { label: 'mail-bridge forward' });
  const f = deps.forwarded[0];
  assert.equal(f.from, hub.agentId);
  assert.deepEqual(f.content, { type: 'data', schema: 'x-dispatch/work', data: { prompt: 'do the thing', taskId: 't1' }, _conversationId: conv.id });
  assert.equal(f.opts.importance, 'high');
});

btest('pair: mail/turn.received goes to participants only, and only to connections that asked for it', holder, async () => {
  const url = brokers.open.url;
  const a = await RawWs.open(url);
  const b = await RawWs.open(url);
  const outsider = await RawWs.open(url);
  const plain = await RawWs.open(url);
  const mailCaps = { mail: { canCreate: true, canJoin: true, canViewHistory: true } };
  for (const [ws, caps] of [[a, mailCaps], [b, mailCaps], [outsider, mailCaps], [plain, {}]]) {
    const r = await ws.call('map/connect', { protocolVersion: 1, participantType: 'agent', capabilities: caps });
    assert.ok(r.result, r.__raw);
    assert.deepEqual(r.result.capabilities.mail.versions, ['1.0', '1.1']);
  }
  const ids = {};
  for (const [k, ws] of Object.entries({ a, b, outsider, plain })) ids[k] = (await ws.call('map/agents/register', { name: k })).result.agent.id;
  const conv = (await a.call('mail/create', { initialParticipants: [{ id: ids.b }, { id: ids.plain }] })).result.conversation;
  const pres = (await a.call('mail/presence', { conversationId: conv.id })).result;
  assert.deepEqual(pres.participants.map((p) => [p.agent_id, p.presence]).sort(),
    [[ids.a, 'online'], [ids.b, 'online'], [ids.plain, 'online']].sort());
  assert.equal(typeof pres.participants[0].joined_at, 'string');
  const turn = (await a.call('mail/turn', { conversationId: conv.id, contentType: 'text', content: 'hi all' })).result.turn;
  const push = await b.waitFor((f) => f.method === 'mail/turn.received');
  assert.deepEqual(push.params, {
    conversation_id: conv.id, turn_id: turn.id, participant_id: ids.a, content_type: 'text', content: 'hi all',
    created_at: new Date(turn.timestamp).toISOString(),
  });
  // frames to one connection keep their order: a reply to a request sent after b got the push comes after
  // any push the broker could have queued for that connection with the turn
  for (const ws of [outsider, plain, a]) {
    assert.ok((await ws.call('map/agents/list', {})).result);
    assert.ok(!ws.frames.some((f) => f.method === 'mail/turn.received'), 'push leaked to a non-participant, a non-opted-in participant or the author');
  }
  const viaId = await b.call('mail/get', { id: conv.id });
  assert.equal(viaId.result?.conversation?.id, conv.id, viaId.__raw);
});

btest('pair: mail/presence answers participants (v1.1 {id} too) and refuses a non-participant with 10002', () => [brokers.auth], async () => {
  const url = brokers.auth.url;
  const owner = await RawWs.open(`${url}?access_token=${KEY}`);
  const outsider = await RawWs.open(`${url}?access_token=out-key`);
  for (const ws of [owner, outsider]) assert.ok((await ws.call('map/connect', { protocolVersion: 1, participantType: 'agent' })).result?.principal);
  const oid = (await owner.call('map/agents/register', { name: 'owner' })).result.agent.id;
  await outsider.call('map/agents/register', { name: 'outsider' });
  const conv = (await owner.call('mail/create', { subject: 'private' })).result.conversation;
  const mine = await owner.call('mail/presence', { id: conv.id });
  assert.deepEqual(mine.result?.participants?.map((p) => [p.agent_id, p.role, p.presence]), [[oid, 'initiator', 'online']], mine.__raw);
  const denied = await outsider.call('mail/presence', { conversationId: conv.id });
  assert.equal(denied.error?.code, 10002, denied.__raw);
  assert.equal(denied.error?.data?.field, 'conversationId');
  const missing = await owner.call('mail/presence', {});
  assert.equal(missing.error?.code, -32602);
});

async function metric(broker, name) {
  const txt = await (await fetch(`http://127.0.0.1:${broker.port}/metrics`)).text();
  const m = txt.match(new RegExp(`^mapbroker_${name} (\\d+)$`, 'm'));
  assert.ok(m, `metric ${name} missing`);
  return Number(m[1]);
}

btest('pair: a failing notification (postMailTurn where the sidecar is no participant) is logged at warn and counted; a good one is not', holder, async () => {
  const { sc } = await startSidecar(brokers.open.url, { agentName: 'lost-sidecar' });
  const hub = await connectAgent(brokers.open.url, { name: 'hub-lost' });
  const conv = (await hub.callExtension('mail/create', { subject: 'not yours' })).conversation;
  const before = await metric(brokers.open, 'notification_errors_total');
  const mark = brokers.open.mark();
  await sc.postMailTurn(conv.id, 'whoever', 'into the void');
  await until(async () => (await metric(brokers.open, 'notification_errors_total')) === before + 1, { label: 'counted' });
  assert.match((await logSync(brokers.open)).slice(mark), /warn .*notification mail\/turn failed \(nobody receives the error\): 10002/);
  const side = (await agentsOf(brokers.open.url)).find((a) => a.name === 'lost-sidecar');
  await hub.callExtension('mail/invite', { conversationId: conv.id, participant: { id: side.id } });
  await sc.postMailTurn(conv.id, side.id, 'now it lands');
  await until(async () => (await hub.callExtension('mail/turns/list', { conversationId: conv.id })).turns.length === 1, { label: 'recorded' });
  assert.equal(await metric(brokers.open, 'notification_errors_total'), before + 1);
});

btest('a flood of failing notifications: every one counted, the log stops after 20 per connection', holder, async () => {
  const raw = await RawWs.open(brokers.open.url);
  await raw.connect({ participantType: 'agent' });
  const before = await metric(brokers.open, 'notification_errors_total');
  const mark = brokers.open.mark();
  for (let i = 0; i < 25; i++) raw.send({ jsonrpc: '2.0', method: 'mail/turn', params: { conversationId: 'conv-nope', contentType: 'text', content: i } });
  assert.ok((await raw.call('map/agents/list', {})).result, 'the connection goes on');
  assert.equal(await metric(brokers.open, 'notification_errors_total'), before + 25);
  const log = (await logSync(brokers.open)).slice(mark);
  assert.equal(log.match(/notification mail\/turn failed/g)?.length, 20);
  assert.match(log, /20 failed notifications on this connection: further ones are only counted/);
});

btest('mail v1.1 {id} for get, close, reopen and replay; a threaded turn is pushed with thread_id', holder, async () => {
  const url = brokers.open.url;
  const a = await RawWs.open(url);
  const b = await RawWs.open(url);
  await a.rpc('map/connect', { protocolVersion: 1, participantType: 'agent' });
  await b.rpc('map/connect', { protocolVersion: 1, participantType: 'agent', capabilities: { mail: { turnReceived: true } } });
  await a.rpc('map/agents/register', { name: 'v11-a' });
  const bid = (await b.rpc('map/agents/register', { name: 'v11-b' })).agent.id;
  const conv = (await a.rpc('mail/create', { initialParticipants: [{ id: bid }] })).conversation;
  const root = (await a.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: 'root' })).turn;
  await b.waitFor((f) => f.method === 'mail/turn.received' && f.params.turn_id === root.id);
  const th = (await a.rpc('mail/thread/create', { conversationId: conv.id, rootTurnId: root.id, subject: 'side' })).thread;
  const t = (await a.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: 'in thread', threadId: th.id })).turn;
  const push = await b.waitFor((f) => f.method === 'mail/turn.received');
  assert.equal(push.params.thread_id, th.id);
  assert.equal(push.params.turn_id, t.id);
  assert.equal('importance' in push.params, false, 'no importance when the turn has none');
  assert.equal((await a.rpc('mail/get', { id: conv.id })).conversation.id, conv.id);
  assert.deepEqual((await a.rpc('mail/replay', { id: conv.id })).turns.map((x) => x.id), [root.id, t.id]);
  assert.equal((await a.rpc('mail/close', { id: conv.id })).conversation.status, 'completed');
  assert.equal((await a.rpc('mail/reopen', { id: conv.id })).conversation.status, 'active');
  // v1.0 as before, and conversationId wins when both are given
  assert.equal((await a.rpc('mail/get', { conversationId: conv.id, id: 'conv-other' })).conversation.id, conv.id);
  const none = await a.call('mail/get', { id: 'conv-nope' });
  assert.equal(none.error?.code, 10000, none.__raw);
  assert.equal(none.error?.data?.field, 'conversationId');
});

btest('pair: a turn visible to some participants is pushed to them only; canObserve:false gets no push', holder, async () => {
  const url = brokers.open.url;
  const caps = { mail: { turnReceived: true } };
  const [a, b, c, d] = await Promise.all([0, 1, 2, 3].map(() => RawWs.open(url)));
  const ids = [];
  for (const ws of [a, b, c, d]) {
    await ws.rpc('map/connect', { protocolVersion: 1, participantType: 'agent', capabilities: caps });
    ids.push((await ws.rpc('map/agents/register', {})).agent.id);
  }
  const conv = (await a.rpc('mail/create', { initialParticipants: [
    { id: ids[1] }, { id: ids[2] }, { id: ids[3], permissions: { canObserve: false } }] })).conversation;
  const secret = (await a.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: 'for c',
    visibility: { type: 'participants', ids: [ids[2]] } })).turn;
  const open = (await a.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: 'for all' })).turn;
  const pushed = (ws) => ws.waitFor((f) => f.method === 'mail/turn.received');
  assert.equal((await pushed(c)).params.turn_id, secret.id);
  assert.equal((await pushed(c)).params.turn_id, open.id);
  assert.equal((await pushed(b)).params.turn_id, open.id, 'b never got the turn it may not see');
  assert.ok((await d.call('map/agents/list', {})).result);
  assert.ok(!d.frames.some((f) => f.method === 'mail/turn.received'), 'a participant without canObserve got a push');
});

btest('pair: v1.1 {id} goes through the same permission gate: a token scoped to one conversation cannot read another', () => [brokers.auth], async () => {
  const url = brokers.auth.url;
  const op = await RawWs.open(url);
  await op.rpc('map/connect', { protocolVersion: 1, participantType: 'agent', auth: HUB });
  await op.rpc('map/agents/register', { name: 'op' });
  const mine = (await op.rpc('mail/create', { subject: 'mine' })).conversation;
  const other = (await op.rpc('mail/create', { subject: 'other' })).conversation;
  const { token } = await op.rpc('x-mapbroker/token/create', { conversationId: mine.id, ttlMs: 60000 });
  const scoped = await RawWs.open(`${url}?token=${encodeURIComponent(token)}`);
  assert.ok((await scoped.rpc('map/connect', { protocolVersion: 1, participantType: 'client' })).principal);
  const refused = await scoped.call('mail/get', { id: other.id });
  assert.equal(refused.error?.code, 1004, refused.__raw);
  assert.equal(refused.error?.data?.field, 'conversationId');
  const ok = await scoped.call('mail/get', { id: mine.id });
  assert.equal(ok.result?.conversation?.id, mine.id, ok.__raw);
});
