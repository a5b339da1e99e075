// MAP.md §1, §3, §4, §5: handshake, id echo, notifications, disconnect, resume.
import assert from 'node:assert/strict';
import {
  useBroker, btest, connectClient, connectAgent, RawWs, record, inbox, withTimeout,
  uid, T, sleep, rejects,
} from './lib/broker.mjs';

const B = useBroker();

function assertCapabilities(caps) {
  assert.equal(typeof caps, 'object');
  assert.equal(caps.streaming?.supportsAck, true, 'capabilities.streaming.supportsAck must be true');
  assert.equal(caps.mail?.enabled, true, 'capabilities.mail.enabled');
  for (const k of ['canCreate', 'canJoin', 'canInvite', 'canViewHistory', 'canCreateThreads']) {
    assert.equal(caps.mail[k], true, `capabilities.mail.${k}`);
  }
  assert.equal(caps.observation?.canObserve, true);
  assert.equal(caps.observation?.canQuery, true);
  assert.equal(caps.messaging?.canSend, true);
  assert.equal(caps.messaging?.canReceive, true);
  assert.equal(caps.lifecycle?.canRegister, true);
  assert.equal(caps.scopes?.canCreateScopes, true);
}

btest('client connect: result fields and granted capabilities', B, async () => {
  const c = await connectClient(B.url, { name: 'probe' });
  const r = c.connectResult;
  assert.equal(r.protocolVersion, 1);
  assert.equal(typeof r.sessionId, 'string');
  assert.ok(r.sessionId.length > 0);
  assert.equal(typeof r.participantId, 'string');
  assert.ok(r.participantId.length > 0);
  assertCapabilities(r.capabilities);
  assert.equal(c.sessionId, r.sessionId);
  assert.deepEqual(c.serverCapabilities, r.capabilities);
  assert.equal(typeof r.resumeToken, 'string', 'connect result carries a resumeToken (§4.2)');
  assert.notEqual(r.reconnected, true);
  // a second client gets a different session and participant
  const c2 = await connectClient(B.url);
  assert.notEqual(c2.connectResult.sessionId, r.sessionId);
  assert.notEqual(c2.connectResult.participantId, r.participantId);
  await c.disconnect();
  await c2.disconnect();
});

btest('client connect: capabilities are granted even if the client declares none/others', B, async () => {
  const c = await connectClient(B.url, { capabilities: { observation: { canObserve: true } } });
  assertCapabilities(c.connectResult.capabilities);
  await c.disconnect();
});

btest('agent connect: participantId echoes the chosen agentId, register result', B, async () => {
  const id = uid('agent');
  const a = await connectAgent(B.url, { agentId: id, name: 'worker-1', role: 'worker' });
  assert.equal(a.connectResult.protocolVersion, 1);
  assert.equal(a.connectResult.participantId, id);
  assertCapabilities(a.connectResult.capabilities);
  assert.equal(a.agentId, id);
  assert.equal(a.registered.id, id);
  assert.equal(a.registered.name, 'worker-1');
  assert.equal(a.registered.role, 'worker');
  assert.equal(a.registered.state, 'registered');
  assert.equal(a.registered.ownerId, id);
  await a.disconnect();
});

btest('agent connect without agentId: broker generates an id', B, async () => {
  const a = await connectAgent(B.url, { name: 'anon' });
  assert.equal(typeof a.agentId, 'string');
  assert.ok(a.agentId.length > 0);
  assert.equal(a.registered.ownerId, a.connectResult.participantId);
  await a.disconnect();
});

btest('request id is echoed with its exact JSON type (int, string, large int, zero, negative)', B, async () => {
  const raw = await RawWs.open(B.url);
  raw.send('{"jsonrpc":"2.0","id":7,"method":"map/connect","params":{"protocolVersion":1,"participantType":"client"}}');
  let f = await raw.waitFor((x) => x.id === 7);
  assert.match(f.__raw, /"id":7[,}]/);
  assert.ok(f.result);

  raw.send('{"jsonrpc":"2.0","id":"7","method":"map/agents/list"}');
  f = await raw.waitFor((x) => x.id === '7');
  assert.match(f.__raw, /"id":"7"/);
  assert.ok(Array.isArray(f.result.agents));

  raw.send('{"jsonrpc":"2.0","id":"req-abc","method":"map/agents/list","params":{}}');
  f = await raw.waitFor((x) => x.id === 'req-abc');
  assert.ok(f.result);

  // 2^53 + 1 is not representable as a double: must come back byte-identical
  raw.send('{"jsonrpc":"2.0","id":9007199254740993,"method":"map/agents/list"}');
  f = await raw.waitFor((x) => typeof x.id === 'number' && x.id > 9e15);
  assert.match(f.__raw, /"id":9007199254740993[,}]/, `large id not echoed verbatim: ${f.__raw}`);

  raw.send('{"jsonrpc":"2.0","id":0,"method":"map/agents/list"}');
  f = await raw.waitFor((x) => x.id === 0);
  assert.match(f.__raw, /"id":0[,}]/);

  raw.send('{"jsonrpc":"2.0","id":-12,"method":"map/agents/list"}');
  f = await raw.waitFor((x) => x.id === -12);
  assert.match(f.__raw, /"id":-12[,}]/);

  // error responses echo the id too
  raw.send('{"jsonrpc":"2.0","id":"err-1","method":"map/nope"}');
  f = await raw.waitFor((x) => x.id === 'err-1');
  assert.equal(f.error.code, -32601);
  raw.close();
});

btest('notifications (no id) are never answered, even when they fail', B, async () => {
  const raw = await RawWs.open(B.url);
  // before connect: a notification must not produce a 1000 error response
  raw.send({ jsonrpc: '2.0', method: 'map/agents/list' });
  await raw.connect();
  raw.send({ jsonrpc: '2.0', method: 'map/agents/list', params: {} });
  raw.send({ jsonrpc: '2.0', method: 'x-unknown-notification', params: { a: 1 } });
  raw.send({ jsonrpc: '2.0', method: 'map/nope' });
  raw.send({ jsonrpc: '2.0', method: 'map/agents/get', params: {} }); // bad params
  raw.send({ jsonrpc: '2.0', method: 'map/subscribe.ack', params: { subscriptionId: 'nope', upToSequence: 3 } });
  const r = await raw.call('map/agents/list', {}, { id: 4242 });
  assert.ok(r.result);
  await sleep(200);
  const others = raw.frames.filter((x) => !('method' in x) && x.id !== 4242 && x.id !== 1);
  assert.deepEqual(others, [], 'no response may be sent for a notification');
  raw.close();
});

btest('map/disconnect is answered (acknowledged, session, resumeToken), then the socket closes', B, async () => {
  const raw = await RawWs.open(B.url);
  const conn = await raw.connect();
  const r = await raw.call('map/disconnect'); // no params at all (SDK style)
  assert.ok(r.result, `disconnect must succeed: ${JSON.stringify(r)}`);
  assert.equal(r.result.acknowledged, true);
  assert.equal(r.result.session.id, conn.sessionId);
  assert.equal(typeof r.result.session.createdAt, 'number');
  assert.ok(Number.isInteger(r.result.session.createdAt));
  assert.equal(typeof r.result.resumeToken, 'string');
  assert.ok(r.result.resumeToken.length > 0);
  const ci = await withTimeout(raw.closed, T, 'socket close after map/disconnect');
  assert.ok(ci.code === 1000 || ci.code === 1005 || ci.code === 1001, `close code ${ci.code}`);
});

btest('map/disconnect with a reason param; SDK disconnect() returns the resume token', B, async () => {
  const c = await connectClient(B.url);
  const tok = await withTimeout(c.disconnect('bye'), T, 'disconnect');
  assert.equal(typeof tok, 'string');
  await withTimeout(c.closed, T, 'SDK connection closed');
  assert.equal(c.isConnected, false);
});

btest('resume token: reconnect on a new socket restores the session (reconnected:true)', B, async () => {
  const c = await connectClient(B.url, { name: 'resumer' });
  const sid = c.connectResult.sessionId;
  // an agent record owned by this client session
  const agentId = uid('owned');
  const reg = await c.callExtension('map/agents/register', { agentId, name: 'owned' });
  assert.equal(reg.agent.id, agentId);
  assert.equal(reg.agent.ownerId, c.connectResult.participantId);
  const tok = await c.disconnect();
  assert.equal(typeof tok, 'string');

  const c2 = await connectClient(B.url, { name: 'resumer', connect: { resumeToken: tok } });
  assert.equal(c2.connectResult.reconnected, true);
  assert.equal(c2.connectResult.sessionId, sid);
  assert.equal(c2.connectResult.participantId, c.connectResult.participantId);
  assert.ok(Array.isArray(c2.connectResult.ownedAgents), 'ownedAgents is an array');
  assert.ok(c2.connectResult.ownedAgents.includes(agentId), `ownedAgents ${JSON.stringify(c2.connectResult.ownedAgents)} lacks ${agentId}`);
  const got = await c2.getAgent(agentId);
  assert.equal(got.agent.id, agentId);
  await c2.disconnect();
});

btest('resume after an abrupt socket drop (no map/disconnect)', B, async () => {
  const c = await connectClient(B.url);
  const tok = c.connectResult.resumeToken;
  assert.equal(typeof tok, 'string');
  c.ws.terminate();
  await withTimeout(c.closed, T, 'closed');
  await sleep(100);
  const c2 = await connectClient(B.url, { connect: { resumeToken: tok } });
  assert.equal(c2.connectResult.reconnected, true);
  assert.equal(c2.connectResult.sessionId, c.connectResult.sessionId);
  await c2.disconnect();
});

btest('invalid resume token: fresh session, reconnected not true', B, async () => {
  const c = await connectClient(B.url, { connect: { resumeToken: 'resume_bogus' } });
  assert.notEqual(c.connectResult.reconnected, true);
  assert.equal(typeof c.connectResult.sessionId, 'string');
  await c.disconnect();
});

btest('second map/connect on the same socket (ClientConnection#reconnect) is allowed', B, async () => {
  const c = await connectClient(B.url);
  const sid = c.connectResult.sessionId;
  const r = await withTimeout(c.reconnect(), T, 'reconnect');
  assert.equal(r.protocolVersion, 1);
  assert.equal(r.sessionId, sid);
  assert.equal(r.reconnected, true);
  const list = await c.listAgents();
  assert.ok(Array.isArray(list.agents));
  await c.disconnect();
});

btest('agent reconnect reclaims its id after the first socket drops', B, async () => {
  const id = uid('reclaim');
  const observer = await connectClient(B.url);
  const a1 = await connectAgent(B.url, { agentId: id, name: 'r', role: 'worker' });
  a1.ws.terminate();
  await withTimeout(a1.closed, T, 'first agent socket closed');
  await sleep(100);
  const a2 = await connectAgent(B.url, { agentId: id, name: 'r', role: 'worker' });
  assert.equal(a2.agentId, id);
  assert.equal(a2.registered.id, id);
  assert.equal(a2.registered.ownerId, a2.connectResult.participantId);
  const got = await observer.getAgent(id);
  assert.equal(got.agent.ownerId, a2.connectResult.participantId);
  // messages to the id now reach the new connection
  const box = inbox(a2);
  const sent = await observer.send({ agent: id }, { hello: 'again' });
  assert.deepEqual(sent.delivered, [id]);
  const m = await box.waitFor((x) => x.id === sent.messageId);
  assert.deepEqual(m.payload, { hello: 'again' });
  await a2.disconnect();
  await observer.disconnect();
});

btest('registering an id owned by a live connection fails with 3000', B, async () => {
  const id = uid('taken');
  const a1 = await connectAgent(B.url, { agentId: id });
  const e = await rejects(connectAgent(B.url, { agentId: id }), 'second register');
  assert.equal(e.code, 3000);
  assert.equal(e.data?.category, 'agent');
  await a1.disconnect();
});

btest('participant_connected on connect; after the resume window: participant_disconnected, owned agents unregistered (owner_disconnected)', B, async (ctx) => {
  const b = await ctx.broker({ args: ['--resume-window-ms', '300'] });
  const obs = await connectClient(b.url);
  const sub = await obs.subscribe({ eventTypes: ['participant_connected', 'participant_disconnected', 'agent_unregistered'] });
  const rec = record(sub);
  const c = await connectClient(b.url, { name: 'newcomer' });
  const pid = c.connectResult.participantId;
  const ev = await rec.waitFor((e) => e.type === 'participant_connected' && e.data?.participantId === pid);
  assert.equal(ev.data.participantType, 'client');
  assert.equal(ev.data.name, 'newcomer');
  assert.equal(ev.source, pid);
  assert.equal(typeof ev.id, 'string');
  assert.ok(Number.isInteger(ev.timestamp));
  const agentId = uid('dropped');
  await c.callExtension('map/agents/register', { agentId });
  c.ws.terminate();
  const ev2 = await rec.waitFor((e) => e.type === 'participant_disconnected' && e.data?.participantId === pid);
  assert.equal(ev2.data.participantType, 'client');
  const ev3 = await rec.waitFor((e) => e.type === 'agent_unregistered' && e.data?.agentId === agentId);
  assert.equal(ev3.data.reason, 'owner_disconnected');
  assert.ok(Array.isArray(ev3.causedBy) && ev3.causedBy.includes(ev2.id), 'causedBy names participant_disconnected');
  await obs.disconnect();
});
