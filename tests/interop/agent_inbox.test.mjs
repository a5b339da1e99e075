// agent-inbox@0.2.3 as shipped against mapbroker: its MapClient (the inbox
// agent) and its federation ConnectionManager (peers: [{systemId, url}]).
import assert from 'node:assert/strict';
import { test, before, after } from 'node:test';
import { spawnSync } from 'node:child_process';
import {
  startBroker, brokerBinary, btest, connectAgent, connectClient, mailbox, withTimeout, uid, until, T, closeAll,
  agentInbox, privateHome, sdk, logSync,
} from './lib.mjs';

privateHome();
const AI = await agentInbox();
const brokers = {};
const holder = { get broker() { return brokers.alpha; } };

before(async () => {
  brokers.beta = await startBroker({ args: ['--system-id', 'beta'] });
  brokers.alpha = await startBroker({ args: ['--system-id', 'alpha', '--peers', `beta=${brokers.beta.url}`] });
});
after(async () => {
  await closeAll();
  // a clean exit: under ASan/UBSan a leak or a sanitizer report makes it non-zero
  for (const b of Object.values(brokers)) assert.deepEqual(await b.stop(), { code: 0, sig: null }, b.stderr().slice(-4000));
});

function newInbox() {
  const events = new AI.EventEmitter();
  const storage = new AI.InMemoryStorage();
  const router = new AI.MessageRouter(storage, events);
  const client = new AI.MapClient(storage, router, events);
  return { events, storage, client };
}

async function agentsOf(url, filter = {}) {
  const c = await connectClient(url);
  const r = await c.listAgents(filter);
  return r.agents;
}

btest('agent-inbox MapClient connects as shipped: registers into scope "default", which is created', holder, async () => {
  const { client } = newInbox();
  assert.equal(await withTimeout(client.connect({ enabled: true, server: brokers.alpha.url }), T, 'connect'), true,
    'MapClient.connect() resolved false: agent-inbox fell back to standalone mode');
  const me = client.getConnection().agentId;
  const all = await agentsOf(brokers.alpha.url);
  const a = all.find((x) => x.id === me);
  assert.ok(a, 'the inbox agent is registered');
  assert.equal(a.role, 'inbox');
  assert.ok(a.scopes.includes('default'), `scopes: ${JSON.stringify(a.scopes)}`);
  const c = await connectClient(brokers.alpha.url);
  const sc = await c.callExtension('map/scopes/get', { scopeId: 'default' });
  assert.equal(sc.scope.id, 'default');
  assert.match(await logSync(brokers.alpha), /scope default created on demand/);
  await client.disconnect();
});

btest('agent-inbox receives a map/send into its local storage', holder, async () => {
  const { client, storage, events } = newInbox();
  assert.equal(await client.connect({ enabled: true, server: brokers.alpha.url }), true);
  const me = client.getConnection().agentId;
  const got = new Promise((r) => events.once('message.created', r));
  const sender = await connectAgent(brokers.alpha.url, { name: 'sender' });
  await sender.send({ agent: me }, { type: 'text', text: 'hello inbox' });
  const m = await withTimeout(got, T, 'message.created');
  assert.equal(m.sender_id, sender.agentId);
  assert.deepEqual(m.content, { type: 'text', text: 'hello inbox' });
  assert.equal(storage.getMessage(m.id).sender_id, sender.agentId);
  await client.disconnect();
});

btest('agent-inbox sends with {agentId}: delivered as {agent}, noted once in the log', holder, async () => {
  const { client } = newInbox();
  assert.equal(await client.connect({ enabled: true, server: brokers.alpha.url }), true);
  const bob = await connectAgent(brokers.alpha.url, { name: 'bob' });
  const box = await mailbox(bob);
  const mark = brokers.alpha.mark();
  assert.equal(await client.sendViaMap({ agentId: bob.agentId }, { type: 'text', text: 'one' }), true);
  assert.equal(await client.sendViaMap({ agentId: bob.agentId }, { type: 'text', text: 'two' }), true);
  const m1 = await box.next();
  const m2 = await box.next();
  assert.deepEqual([m1.payload.text, m2.payload.text], ['one', 'two']);
  assert.equal(m1.from, client.getConnection().agentId);
  const log = (await logSync(brokers.alpha)).slice(mark);
  assert.equal(log.match(/compat: map\/send to \{agentId\}/g)?.length, 1, `logged once per connection:\n${log}`);
  // the neighbour: an address with neither agent nor agentId is still an error the client can act on
  const raw = client.getConnection();
  await assert.rejects(raw.send({ agentIdd: bob.agentId }, { x: 1 }));
  await client.disconnect();
});

btest('agent-inbox federates: ConnectionManager peers with a second broker and routes bob@beta', holder, async () => {
  const bob = await connectAgent(brokers.beta.url, { name: 'bob-b' });
  const box = await mailbox(bob);
  const events = new AI.EventEmitter();
  const incoming = [];
  const cm = new AI.ConnectionManager(events, { systemId: 'inbox-alpha' }, {
    sdkClass: sdk.AgentConnection,
    onIncomingMessage: (m) => incoming.push(m),
  });
  const link = await withTimeout(cm.federate({ systemId: 'beta', url: brokers.beta.url }), T, 'federate');
  assert.equal(link.status, 'connected');
  assert.equal(cm.hasTransport('beta'), true, 'a real MAP connection to the peer');
  const gw = (await agentsOf(brokers.beta.url)).find((a) => a.role === 'gateway' && a.name === 'inbox-alpha');
  assert.ok(gw, 'the gateway agent is registered on beta');
  assert.ok(gw.scopes.includes('federation'));
  const r = await cm.route({
    id: uid('m'), scope: 'default', sender_id: 'alice', importance: 'normal',
    recipients: [{ agent_id: `${bob.agentId}@beta`, kind: 'to' }],
    content: { type: 'text', text: 'across systems' },
  });
  assert.deepEqual(r, { delivered: true, peerId: 'beta' });
  const m = await box.next();
  assert.deepEqual(m.payload, { type: 'text', text: 'across systems' });
  assert.equal(m.from, gw.id, 'sent by the gateway agent');
  assert.equal(m.meta?.sourceSystem, 'inbox-alpha');
  assert.equal(m.meta?.senderId, 'alice');
  // bob answers the gateway: the ConnectionManager hands it to agent-inbox
  await bob.send({ agent: gw.id }, { type: 'text', text: 'back' });
  await until(() => incoming.length > 0, { label: 'incoming federated reply' });
  assert.equal(incoming[0].peerId, 'beta');
  assert.deepEqual(incoming[0].payload, { type: 'text', text: 'back' });
  await cm.destroy();
});

btest('agent-inbox across broker federation: {system, agentId} from beta reaches the inbox on alpha', holder, async () => {
  const { client, events } = newInbox();
  assert.equal(await client.connect({ enabled: true, server: brokers.alpha.url }), true);
  const me = client.getConnection().agentId;
  const got = new Promise((r) => events.once('message.created', r));
  const carol = await connectAgent(brokers.beta.url, { name: 'carol' });
  // the --peers link is up once beta routes to alpha
  await until(async () => {
    try { await carol.send({ system: 'alpha', agentId: me }, { type: 'text', text: 'fed' }); return true; } catch { return false; }
  }, { label: 'federation link beta -> alpha' });
  const m = await withTimeout(got, T, 'federated message.created');
  assert.deepEqual(m.content, { type: 'text', text: 'fed' });
  await client.disconnect();
});

btest('scopes are created on demand by map/scopes/join too, with the default join policy and a scope_created event', holder, async () => {
  const watcher = await connectClient(brokers.alpha.url);
  const created = [];
  const sub = await watcher.subscribe({ eventTypes: ['scope_created'] });
  (async () => { for await (const ev of sub) created.push(ev); })();
  const ag = await connectAgent(brokers.alpha.url, { name: 'joiner' });
  const scopeId = uid('team');
  const r = await ag.callExtension('map/scopes/join', { scopeId, agentId: ag.agentId });
  assert.equal(r.joined, true);
  assert.equal(r.scope.id, scopeId);
  assert.equal(r.scope.joinPolicy, undefined, 'default join policy (open)');
  const ev = await until(() => created.find((e) => e.data?.scopeId === scopeId), { label: 'scope_created' });
  assert.equal(ev.source, ag.agentId);
  // the neighbour: joining for an agent that does not exist creates nothing
  const ghost = uid('ghost');
  await assert.rejects(ag.callExtension('map/scopes/join', { scopeId: ghost, agentId: 'no-such-agent' }));
  await assert.rejects(ag.callExtension('map/scopes/get', { scopeId: ghost }), (e) => e.code === 2002 || /not found/i.test(e.message));
});

btest('pair: with --no-auto-create-scopes registering into an unknown scope is 2002 and agent-inbox runs standalone', holder, async (ctx) => {
  for (const flag of ['--no-auto-create-scopes', '--auto-create-scopes=false']) {
    const strict = await ctx.broker({ args: [flag] });
    const raw = await (await import('./lib.mjs')).RawWs.open(strict.url);
    await raw.connect({ participantType: 'agent' });
    const r = await raw.call('map/agents/register', { name: 'x', scopes: ['default'] });
    assert.equal(r.error?.code, 2002, r.__raw);
    assert.equal(r.error?.data?.field, 'scopes');
    const { client } = newInbox();
    assert.equal(await client.connect({ enabled: true, server: strict.url }), false);
    // the neighbour: an explicitly created scope works as before
    assert.ok((await raw.call('map/scopes/create', { scopeId: 'default' })).result);
    assert.ok((await raw.call('map/agents/register', { name: 'y', scopes: ['default'] })).result?.agent, 'register into an existing scope');
  }
});

test('--auto-create-scopes takes true/false (and --no-); anything else is a start-up error naming the flag', () => {
  const bad = spawnSync(brokerBinary(), ['--store', 'memory:', '--port', '1', '--auto-create-scopes=maybe'], { encoding: 'utf8' });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /--auto-create-scopes expects true or false, got "maybe"/);
  const help = spawnSync(brokerBinary(), ['--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /--\[no-\]auto-create-scopes .*\[default: true\]/);
});
