// Mail durability and the broker's mail extensions, through the real binary:
// restart on the same SQLite file, SIGKILL right after acks (repeated),
// conversation per task (spawn -> child conversation -> stop closes it with a
// summary), structured turn metadata (handoff_target / stop_reason) and the
// handoff subscription filter.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  btest, startBroker, connectClient, connectAgent, inbox, record, RawWs, withTimeout, rejects, sleep, uid, T,
} from './lib/broker.mjs';

const CRASH_ROUNDS = Number(process.env.MB_CRASH_ROUNDS || 12);

function tmpdb() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-dur-'));
  return { dir, uri: `sqlite:${path.join(dir, 'broker.db')}` };
}

async function health(b) {
  const r = await fetch(`http://127.0.0.1:${b.port}/healthz`);
  return r.json();
}

btest('restart on the same database: conversations, participants, threads, turns, replay positions survive', async (ctx) => {
  const db = tmpdb();
  let b = await ctx.broker({ store: db.uri });
  const epoch1 = (await health(b)).store.epoch;
  const C = await connectClient(b.url);
  const A = await connectAgent(b.url, { agentId: uid('dur-agent'), name: 'worker' });
  const sub = record(await C.subscribe({ eventTypes: ['mail.*'] }));
  const conv = await C.callExtension('mail/create', {
    subject: 'durable', initialParticipants: [{ id: A.agentId, role: 'worker' }],
    initialTurn: { contentType: 'text', content: { text: 'first' } },
  });
  const cid = conv.conversation.id;
  const t2 = await A.callExtension('mail/turn', { conversationId: cid, contentType: 'text', content: { text: 'second' } });
  const th = await C.callExtension('mail/thread/create', { conversationId: cid, rootTurnId: t2.turn.id, subject: 'side' });
  await A.callExtension('mail/turn', { conversationId: cid, contentType: 'x-note', content: { n: 3 }, threadId: th.thread.id });
  await sub.waitFor((e) => e.type === 'mail.turn.added' && e.data.turn.contentType === 'x-note');
  const marker = sub.envs.find((e) => e.event.type === 'mail.thread.created').eventId;
  await b.stop();

  b = await ctx.broker({ store: db.uri });
  assert.equal((await health(b)).store.epoch, epoch1, 'epoch is stable across restarts');
  const C2 = await connectClient(b.url);
  const got = await C2.callExtension('mail/get', { conversationId: cid, include: { participants: true, threads: true, stats: true } });
  assert.equal(got.conversation.subject, 'durable');
  assert.deepEqual(got.participants.map((p) => p.id).sort(), [C.connectResult.participantId, A.agentId].sort());
  assert.equal(got.threads.length, 1);
  assert.equal(got.threads[0].turnCount, 1);
  assert.equal(got.stats.totalTurns, 3);
  const turns = await C2.callExtension('mail/turns/list', { conversationId: cid });
  assert.deepEqual(turns.turns.map((t) => t.content.text ?? t.content.n), ['first', 'second', 3]);
  // event replay from a position recorded before the restart
  const rep = await C2.callExtension('map/replay', { afterEventId: marker, filter: { eventTypes: ['mail.turn.added'] } });
  assert.equal(rep.events.length, 1);
  assert.equal(rep.events[0].event.data.turn.contentType, 'x-note');
  // new turns continue the sequence
  const A2 = await connectAgent(b.url, { agentId: A.agentId, name: 'worker' });
  await A2.callExtension('mail/turn', { conversationId: cid, contentType: 'text', content: { text: 'after restart' } });
  const all = await C2.callExtension('mail/turns/list', { conversationId: cid });
  assert.equal(all.turns.length, 4);
  fs.rmSync(db.dir, { recursive: true, force: true });
});

btest(`SIGKILL right after acks loses no acknowledged turn (${CRASH_ROUNDS} rounds)`, async (ctx) => {
  const db = tmpdb();
  let b = await ctx.broker({ store: db.uri, args: ['--durability', 'full'] });
  let raw = await RawWs.open(b.url);
  await raw.connect({ participantId: 'crash-client' });
  const cid = (await raw.rpc('mail/create', { subject: 'crash' })).conversation.id;
  const acked = [];
  for (let round = 0; round < CRASH_ROUNDS; round++) {
    // pipeline a burst of turns, collect every ack, then kill at once
    const pending = [];
    for (let i = 0; i < 25; i++) {
      pending.push(raw.rpc('mail/turn', { conversationId: cid, contentType: 'data', content: { round, i } }));
    }
    const res = await Promise.all(pending);
    for (const r of res) acked.push(r.turn.id);
    b.proc.kill('SIGKILL');
    await new Promise((r) => b.proc.once('exit', r));
    b = await ctx.broker({ store: db.uri, args: ['--durability', 'full'] });
    raw = await RawWs.open(b.url);
    await raw.connect({ participantId: 'crash-client' });
    const seen = new Set();
    let after;
    for (;;) {
      const page = await raw.rpc('mail/turns/list', { conversationId: cid, limit: 1000, filter: after ? { afterTurnId: after } : undefined });
      for (const t of page.turns) seen.add(t.id);
      if (!page.hasMore) break;
      after = page.nextCursor;
    }
    const lost = acked.filter((id) => !seen.has(id));
    assert.deepEqual(lost, [], `round ${round}: acknowledged turns lost after SIGKILL`);
    assert.equal(seen.size, acked.length);
  }
  fs.rmSync(db.dir, { recursive: true, force: true });
});

btest('conversation per task: spawn gets a child conversation, messages carry it, stop closes it with a summary', async (ctx) => {
  const b = await ctx.broker({});
  const obs = await connectClient(b.url);
  const events = record(await obs.subscribe({ eventTypes: ['mail.*'] }));
  const coord = await connectAgent(b.url, { agentId: uid('coord'), name: 'coordinator' });
  const conv = await coord.callExtension('mail/create', { type: 'user-session', subject: 'plan the trip' });
  const parentId = conv.conversation.id;
  const wid = uid('worker');
  const sp = await coord.callExtension('map/agents/spawn', {
    agentId: wid, name: 'researcher', role: 'worker', parent: coord.agentId, metadata: { conversationId: parentId },
  });
  const childId = sp.agent.metadata.conversationId;
  assert.ok(childId && childId !== parentId, 'spawned agent carries its own task conversation');
  const child = await coord.callExtension('mail/get', { conversationId: childId, include: { participants: true } });
  assert.equal(child.conversation.type, 'agent-task');
  assert.equal(child.conversation.parentConversationId, parentId);
  assert.ok(child.participants.some((p) => p.id === wid && p.role === 'worker'));
  // the parent conversation records where the task started
  const pturns = await coord.callExtension('mail/turns/list', { conversationId: parentId });
  assert.ok(pturns.turns.some((t) => t.contentType === 'event' && t.content.event === 'task.spawned' && t.content.agentId === wid));

  // the worker process connects and reclaims its record; messages to it carry the task conversation
  const W = await connectAgent(b.url, { agentId: wid, name: 'researcher' });
  const box = inbox(W);
  await coord.send({ agent: wid }, { task: 'find flights' });
  const m = await box.waitFor((x) => x.payload && x.payload.task === 'find flights');
  assert.equal(m.meta.mail.conversationId, childId);
  await W.send({ agent: coord.agentId }, { result: 'LHR->SFO 9:40' });
  await sleep(100);
  let cturns = await coord.callExtension('mail/turns/list', { conversationId: childId });
  assert.deepEqual(cturns.turns.filter((t) => t.source.type === 'intercepted').map((t) => t.content),
    [{ task: 'find flights' }, { result: 'LHR->SFO 9:40' }]);

  // stopping the task closes its conversation with a completion turn and a summary
  await coord.callExtension('map/agents/stop', { agentId: wid, reason: 'complete' });
  const closed = await events.waitFor((e) => e.type === 'mail.closed' && e.data.conversationId === childId);
  assert.ok(closed.data.summary && closed.data.summary.length > 0);
  const after = await coord.callExtension('mail/get', { conversationId: childId });
  assert.equal(after.conversation.status, 'completed');
  assert.ok(after.conversation.metadata.summary.includes('turns'));
  cturns = await coord.callExtension('mail/turns/list', { conversationId: childId, order: 'desc', limit: 1 });
  assert.equal(cturns.turns[0].content.event, 'task.completed');
  assert.equal(cturns.turns[0].metadata.stop_reason, 'complete');
  // the tree of conversations is queryable
  const tree = await coord.callExtension('x-mapbroker/mail/tree', { conversationId: parentId });
  assert.equal(tree.tree.conversation.id, parentId);
  assert.deepEqual(tree.tree.children.map((n) => n.conversation.id), [childId]);
  const kids = await coord.callExtension('mail/list', { filter: { parentConversationId: parentId } });
  assert.deepEqual(kids.conversations.map((c) => c.id), [childId]);
});

btest('structured turn metadata: handoff_target and stop_reason validated, events raised, handoff filter waits for it', async (ctx) => {
  const b = await ctx.broker({});
  const A = await connectAgent(b.url, { agentId: uid('ho-a'), name: 'a' });
  const Bg = await connectAgent(b.url, { agentId: uid('ho-b'), name: 'b' });
  const conv = await A.callExtension('mail/create', { initialParticipants: [{ id: Bg.agentId }] });
  const cid = conv.conversation.id;
  const waitB = record(await Bg.subscribe({ mail: { conversationId: cid, handoffTarget: Bg.agentId } }));
  const all = record(await A.subscribe({ eventTypes: ['mail.turn.handoff', 'mail.turn.stop'] }));
  await A.callExtension('mail/turn', { conversationId: cid, contentType: 'text', content: { text: 'not for you' } });
  const t = await A.callExtension('mail/turn', {
    conversationId: cid, contentType: 'text', content: { text: 'your turn' }, metadata: { handoff_target: Bg.agentId },
  });
  assert.equal(t.turn.metadata.handoff_target, Bg.agentId);
  const got = await waitB.waitFor((e) => e.type === 'mail.turn.added');
  assert.equal(got.data.turn.id, t.turn.id, 'the handoff filter skips turns not handed to B');
  const ho = await all.waitFor((e) => e.type === 'mail.turn.handoff');
  assert.equal(ho.data.to, Bg.agentId);
  assert.equal(ho.data.from, A.agentId);
  const s = await Bg.callExtension('mail/turn', {
    conversationId: cid, contentType: 'text', content: { text: 'done' }, metadata: { stop_reason: 'convergence' },
  });
  const st = await all.waitFor((e) => e.type === 'mail.turn.stop');
  assert.equal(st.data.turnId, s.turn.id);
  assert.equal(st.data.reason, 'convergence');
  let e = await rejects(A.callExtension('mail/turn', { conversationId: cid, contentType: 'text', content: {}, metadata: { stop_reason: 'bored' } }));
  assert.equal(e.code, -32602);
  assert.equal(e.data.field, 'metadata.stop_reason');
  e = await rejects(A.callExtension('mail/turn', { conversationId: cid, contentType: 'text', content: {}, metadata: { handoff_target: 'nobody-here' } }));
  assert.equal(e.code, 2001);
  assert.equal(e.data.field, 'metadata.handoff_target');
});

btest('a bad meta.mail never fails map/send', async (ctx) => {
  const b = await ctx.broker({});
  const A = await connectAgent(b.url, { agentId: uid('bm-a') });
  const Bx = await connectAgent(b.url, { agentId: uid('bm-b') });
  const box = inbox(Bx);
  for (const mail of [{ conversationId: 'conv-nope' }, { conversationId: 42 }, { threadId: 'x' }, 'str']) {
    const r = await A.send({ agent: Bx.agentId }, { m: JSON.stringify(mail) }, { mail });
    assert.deepEqual(r.delivered, [Bx.agentId]);
  }
  await box.waitFor(() => box.msgs.length === 4);
});

btest('event retention: replay from a trimmed position is an explicit error; unknown ids in range resume exactly', async (ctx) => {
  const db = tmpdb();
  const b = await ctx.broker({ store: db.uri, args: ['--event-retention', '1000', '--event-history', '100', '--durability', 'normal'] });
  const raw = await RawWs.open(b.url);
  await raw.connect({ participantId: 'ret-client' });
  const cid = (await raw.rpc('mail/create', { subject: 'retention' })).conversation.id;
  const first = await raw.rpc('map/replay', { limit: 1 });
  const earliest = first.events[0].eventId;
  const pending = [];
  for (let i = 0; i < 1300; i++) pending.push(raw.rpc('mail/turn', { conversationId: cid, contentType: 'data', content: { i } }));
  await Promise.all(pending);
  // trimming runs in housekeeping (every second)
  let err;
  for (let i = 0; i < 40 && !err; i++) {
    await sleep(250);
    const r = await raw.call('map/replay', { afterEventId: earliest, limit: 5 });
    if (r.error) err = r.error;
  }
  assert.ok(err, 'replay from a trimmed position fails');
  assert.equal(err.code, -32602);
  assert.equal(err.data.field, 'afterEventId');
  assert.match(err.message, /retention/);
  // A client's last seen event may be a message_* event, which is never stored.
  // After a restart, replay from it resumes with the next stored event.
  const agentConn = await RawWs.open(b.url);
  await agentConn.connect({ participantType: 'agent' });
  await agentConn.rpc('map/agents/register', { agentId: 'ret-agent' });
  await raw.rpc('map/send', { to: { agent: 'ret-agent' }, payload: { x: 1 } });
  const sent = await raw.rpc('map/replay', { limit: 1000, filter: { eventTypes: ['message_sent'] } });
  const lastSeen = sent.events.at(-1).eventId;
  const t = await raw.rpc('mail/turn', { conversationId: cid, contentType: 'text', content: { text: 'after the send' } });
  await b.stop();
  const b2 = await ctx.broker({ store: db.uri, args: ['--event-retention', '1000', '--event-history', '100'] });
  const raw2 = await RawWs.open(b2.url);
  await raw2.connect({ participantId: 'ret-client' });
  const after = await raw2.rpc('map/replay', { afterEventId: lastSeen, limit: 5, filter: { eventTypes: ['mail.turn.added'] } });
  assert.equal(after.events[0].event.data.turn.id, t.turn.id, 'resumes right after the unstored event');
  const bad = await raw2.call('map/replay', { afterEventId: 'not-an-id' });
  assert.equal(bad.error.code, -32602);
  fs.rmSync(db.dir, { recursive: true, force: true });
});
