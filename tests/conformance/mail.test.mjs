// MAP.md §10 (mail extension) and §14.7 (SDK error numbering 10000-10010).
// Set MB_SKIP_MAIL=1 to skip the whole file while the mail layer does not exist.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  useBroker, btest, connectClient, connectAgent, inbox, record, rejects, settle, sleep, uid,
} from './lib/broker.mjs';

const SKIP = process.env.MB_SKIP_MAIL === '1';
if (SKIP) {
  test('mail conformance (skipped: MB_SKIP_MAIL=1)', { skip: 'MB_SKIP_MAIL=1' }, () => {});
}
const B = SKIP ? null : useBroker();
const mtest = (name, fn) => { if (!SKIP) btest(name, B, fn); };

const CODES = {
  CONV_NOT_FOUND: 10000, CONV_CLOSED: 10001, NOT_PARTICIPANT: 10002, PERMISSION: 10003,
  TURN_NOT_FOUND: 10004, THREAD_NOT_FOUND: 10005, BAD_CONTENT_TYPE: 10006, ALREADY_JOINED: 10007,
  INVITATION_REQUIRED: 10008, HISTORY_DENIED: 10009, PARENT_NOT_FOUND: 10010,
};

async function mailErr(promise, code, label) {
  const e = await rejects(promise, label);
  assert.equal(e.code, code, `${label ?? 'mail call'}: expected ${code}, got ${e.code} ${e.message}`);
  assert.equal(e.data?.category, 'mail', `${label}: data.category`);
  return e;
}

/**
 * An SDK AgentConnection (which has the mail helpers) with a tiny `rpc`
 * adapter so the tests read uniformly; every call goes through the SDK method.
 */
const VIA_SDK = {
  'mail/turn': (a, p) => a.recordTurn(p),
  'mail/join': (a, p) => a.joinConversation(p),
  'mail/leave': (a, p) => a.leaveConversation(p.conversationId, p.reason),
  'mail/invite': (a, p) => a.inviteToConversation(p),
  'mail/close': (a, p) => a.closeConversation(p.conversationId, p.reason),
  'mail/turns/list': (a, p) => a.listTurns(p),
  'mail/replay': (a, p) => a.replayConversation(p),
};
async function rawAgent(url, agentId = uid('magent')) {
  const a = await connectAgent(url, { agentId, name: agentId, role: 'worker' });
  assert.equal(a.agentId, agentId);
  a.rpc = (method, params) => (VIA_SDK[method] ? VIA_SDK[method](a, params) : a.callExtension(method, params));
  a.close = () => { a.disconnect().catch(() => {}); };
  return a;
}

const DEFAULT_PERMS = {
  canSend: true, canObserve: true, canInvite: false, canRemove: false,
  canCreateThreads: true, historyAccess: 'full', canSeeInternal: false,
};

async function world() {
  const C = await connectClient(B.url, { name: 'mail-ui' });
  const W = await rawAgent(B.url);
  return { C, W, cpid: C.connectResult.participantId };
}

mtest('mail/create with no params: conversation, creator participant, events', async () => {
  const { C, cpid } = await world();
  const rec = record(await C.subscribe({ mail: {} }));
  const r = await C.createConversation();
  const conv = r.conversation;
  assert.match(conv.id, /^conv-[0-9A-HJKMNP-TV-Z]{26}$/);
  assert.equal(conv.type, 'multi-agent');
  assert.equal(conv.status, 'active');
  assert.equal(conv.participantCount, 1);
  assert.equal(conv.createdBy, cpid);
  assert.ok(Number.isInteger(conv.createdAt));
  assert.ok(Number.isInteger(conv.updatedAt));
  assert.deepEqual(conv.metadata, {});
  assert.equal(r.participant.id, cpid);
  assert.equal(r.participant.role, 'initiator');
  assert.equal(r.participant.type, 'user');
  assert.ok(Number.isInteger(r.participant.joinedAt));
  assert.deepEqual(r.participant.permissions, DEFAULT_PERMS);
  assert.equal(r.initialTurn, undefined);
  await rec.waitFor((e) => e.type === 'mail.created' && e.data.conversationId === conv.id);
  await settle(C);
  const mine = rec.events.filter((e) => e.data?.conversationId === conv.id);
  assert.deepEqual(mine.map((e) => e.type), ['mail.participant.joined', 'mail.created']);
  assert.equal(mine[0].data.participant.id, cpid);
  assert.equal(mine[1].data.type, 'multi-agent');
  assert.equal(mine[1].data.createdBy, cpid);
  assert.equal(mine[1].source, cpid, 'mail events carry source = acting participant');
});

mtest('mail/create with initial participants and initial turn', async () => {
  const { C, W, cpid } = await world();
  const rec = record(await C.subscribe({ eventTypes: ['mail.*'] }));
  const r = await C.createConversation({
    type: 'agent-task', subject: 'Sprint', metadata: { p: 1 },
    initialParticipants: [{ id: W.agentId, role: 'worker' }],
    initialTurn: { contentType: 'text', content: { text: 'Let us plan.' } },
  });
  const conv = r.conversation;
  assert.equal(conv.type, 'agent-task');
  assert.equal(conv.subject, 'Sprint');
  assert.deepEqual(conv.metadata, { p: 1 });
  assert.equal(conv.participantCount, 2);
  const t = r.initialTurn;
  assert.match(t.id, /^turn-[0-9A-HJKMNP-TV-Z]{26}$/);
  assert.equal(t.conversationId, conv.id);
  assert.equal(t.participant, cpid);
  assert.equal(t.contentType, 'text');
  assert.deepEqual(t.content, { text: 'Let us plan.' });
  assert.deepEqual(t.source, { type: 'explicit', method: 'mail/turn' });
  assert.equal(t.status, 'complete');
  assert.ok(Number.isInteger(t.timestamp));
  await rec.waitFor((e) => e.type === 'mail.turn.added' && e.data.conversationId === conv.id);
  await settle(C);
  const mine = rec.events.filter((e) => e.data?.conversationId === conv.id);
  assert.deepEqual(mine.map((e) => e.type), ['mail.participant.joined', 'mail.participant.joined', 'mail.created', 'mail.turn.added']);
  const wp = mine[1].data.participant;
  assert.equal(wp.id, W.agentId);
  assert.equal(wp.type, 'agent');
  assert.equal(wp.role, 'worker');
  assert.equal(mine[2].data.subject, 'Sprint');
  assert.deepEqual(mine[3].data.turn, t);
  const g = await C.getConversation(conv.id, { participants: true });
  assert.deepEqual(g.participants.map((p) => [p.id, p.role]).sort(), [[cpid, 'initiator'], [W.agentId, 'worker']].sort());
  W.close();
});

mtest('mail/create errors: PARENT_NOT_FOUND 10010, BAD_CONTENT_TYPE 10006; valid parent accepted', async () => {
  const { C } = await world();
  await mailErr(C.createConversation({ parentConversationId: 'conv-nope' }), CODES.PARENT_NOT_FOUND, 'unknown parent');
  await mailErr(C.createConversation({ initialTurn: { contentType: 'html', content: '<b>x</b>' } }), CODES.BAD_CONTENT_TYPE, 'html initial turn');
  const parent = (await C.createConversation({ subject: 'parent' })).conversation;
  const child = (await C.createConversation({ parentConversationId: parent.id })).conversation;
  assert.equal(child.parentConversationId, parent.id);
});

mtest('mail/get: includes participants, threads, recentTurns, stats; unknown id 10000', async () => {
  const { C, W, cpid } = await world();
  const conv = (await C.createConversation({ subject: 'g', initialParticipants: [{ id: W.agentId }], initialTurn: { contentType: 'text', content: { text: 'a' } } })).conversation;
  const t2 = (await W.rpc('mail/turn', { conversationId: conv.id, contentType: 'data', content: { n: 2 } })).turn;
  assert.equal(t2.participant, W.agentId, 'agent turns are recorded under the agent id, not the session id');
  const th = (await C.createThread({ conversationId: conv.id, rootTurnId: t2.id, subject: 'deep' })).thread;
  const t3 = (await W.rpc('mail/turn', { conversationId: conv.id, contentType: 'x-tool-call', content: { tool: 'grep' }, threadId: th.id, inReplyTo: t2.id })).turn;
  const g = await C.getConversation(conv.id, { participants: true, threads: true, recentTurns: 2, stats: true });
  assert.equal(g.conversation.id, conv.id);
  assert.deepEqual(g.participants.map((p) => p.id).sort(), [cpid, W.agentId].sort());
  assert.equal(g.participants.find((p) => p.id === W.agentId).role, 'assistant');
  assert.deepEqual(g.threads.map((x) => x.id), [th.id]);
  assert.equal(g.threads[0].turnCount, 1);
  assert.deepEqual(g.recentTurns.map((x) => x.id), [t3.id, t2.id], 'recentTurns: newest first');
  assert.deepEqual(g.stats, { totalTurns: 3, turnsByContentType: { text: 1, data: 1, 'x-tool-call': 1 }, activeParticipants: 2, threadCount: 1 });
  const plain = await C.getConversation(conv.id);
  assert.equal(plain.participants, undefined);
  assert.equal(plain.recentTurns, undefined);
  await mailErr(C.getConversation('conv-does-not-exist'), CODES.CONV_NOT_FOUND, 'get unknown');
  W.close();
});

mtest('mail/list: filters and cursor pagination', async () => {
  const { C, W } = await world();
  const mine = [];
  for (let i = 0; i < 5; i++) {
    mine.push((await C.createConversation({ type: 'user-session', subject: `l${i}`, initialParticipants: i < 2 ? [{ id: W.agentId }] : [] })).conversation.id);
  }
  const r = await C.listConversations({ filter: { participantId: W.agentId } });
  assert.deepEqual(r.conversations.map((c) => c.id).sort(), mine.slice(0, 2).sort());
  assert.equal(r.hasMore, false);
  // page through type=user-session with limit 2
  const seen = [];
  let cursor;
  for (let i = 0; i < 10; i++) {
    const p = await C.listConversations({ filter: { type: ['user-session'], status: ['active'] }, limit: 2, cursor });
    assert.ok(p.conversations.length <= 2);
    seen.push(...p.conversations.map((c) => c.id));
    if (!p.hasMore) break;
    assert.equal(p.nextCursor, p.conversations.at(-1).id);
    cursor = p.nextCursor;
  }
  for (const id of mine) assert.ok(seen.includes(id), `list pagination lost ${id}`);
  assert.equal(new Set(seen).size, seen.length, 'no duplicates across pages');
  await C.closeConversation(mine[4]);
  const active = await C.listConversations({ filter: { type: ['user-session'], status: ['completed'] }, limit: 100 });
  assert.ok(active.conversations.some((c) => c.id === mine[4]));
  assert.ok(!active.conversations.some((c) => c.id === mine[3]));
  W.close();
});

mtest('mail/close: completed + closedAt, mail.closed event, CONV_CLOSED on second close and on turn/join/invite', async () => {
  const { C, W, cpid } = await world();
  const rec = record(await C.subscribe({ eventTypes: ['mail.closed'] }));
  const conv = (await C.createConversation({ initialParticipants: [{ id: W.agentId }] })).conversation;
  const r = await C.closeConversation(conv.id, 'finished');
  assert.equal(r.conversation.status, 'completed');
  assert.ok(Number.isInteger(r.conversation.closedAt));
  const ev = await rec.waitFor((e) => e.data?.conversationId === conv.id);
  assert.equal(ev.data.closedBy, cpid);
  assert.equal(ev.data.reason, 'finished');
  await mailErr(C.closeConversation(conv.id), CODES.CONV_CLOSED, 'close twice');
  await mailErr(W.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: { text: 'late' } }), CODES.CONV_CLOSED, 'turn on closed');
  const X = await rawAgent(B.url);
  await mailErr(X.rpc('mail/join', { conversationId: conv.id }), CODES.CONV_CLOSED, 'join closed');
  await mailErr(C.closeConversation('conv-nope-close'), CODES.CONV_NOT_FOUND, 'close unknown');
  // close by a non-participant
  const conv2 = (await C.createConversation()).conversation;
  await mailErr(X.rpc('mail/close', { conversationId: conv2.id }), CODES.NOT_PARTICIPANT, 'close by outsider');
  W.close(); X.close();
});

mtest('mail/reopen (v1.1): a completed conversation becomes active again', async () => {
  const { C, W } = await world();
  const conv = (await C.createConversation({ initialParticipants: [{ id: W.agentId }] })).conversation;
  await C.closeConversation(conv.id);
  const r = await C.callExtension('mail/reopen', { conversationId: conv.id });
  assert.equal(r.conversation.id, conv.id);
  assert.equal(r.conversation.status, 'active');
  assert.equal(r.conversation.closedAt ?? undefined, undefined);
  const t = await W.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: { text: 'back' } });
  assert.equal(t.turn.conversationId, conv.id);
  await mailErr(C.callExtension('mail/reopen', { conversationId: 'conv-nope-reopen' }), CODES.CONV_NOT_FOUND, 'reopen unknown');
  W.close();
});

mtest('mail/join: participant (agent id, default role assistant), event, ALREADY_JOINED, catchUp history', async () => {
  const { C } = await world();
  const rec = record(await C.subscribe({ eventTypes: ['mail.participant.joined'] }));
  const conv = (await C.createConversation({ initialTurn: { contentType: 'text', content: { text: 't1' } } })).conversation;
  const t2 = (await C.recordTurn({ conversationId: conv.id, contentType: 'text', content: { text: 't2' } })).turn;
  const t3 = (await C.recordTurn({ conversationId: conv.id, contentType: 'text', content: { text: 't3' } })).turn;
  const X = await rawAgent(B.url);
  const j = await X.rpc('mail/join', { conversationId: conv.id });
  assert.equal(j.conversation.id, conv.id);
  assert.equal(j.conversation.participantCount, 2);
  assert.equal(j.participant.id, X.agentId);
  assert.equal(j.participant.role, 'assistant');
  assert.equal(j.participant.type, 'agent');
  const ev = await rec.waitFor((e) => e.data?.conversationId === conv.id && e.data.participant?.id === X.agentId);
  assert.equal(ev.source, X.agentId);
  await mailErr(X.rpc('mail/join', { conversationId: conv.id }), CODES.ALREADY_JOINED, 'join twice');
  const Y = await rawAgent(B.url);
  const jy = await Y.rpc('mail/join', { conversationId: conv.id, role: 'observer', catchUp: { from: t2.id, limit: 10 } });
  assert.equal(jy.participant.role, 'observer');
  assert.deepEqual(jy.history.map((t) => t.id), [t3.id], 'catchUp history: turns after `from`, oldest first');
  const Z = await rawAgent(B.url);
  const jz = await Z.rpc('mail/join', { conversationId: conv.id, catchUp: { from: 0, limit: 2 } });
  assert.equal(jz.history.length, 2);
  assert.equal(jz.history[1].id, t2.id);
  await mailErr(X.rpc('mail/join', { conversationId: 'conv-nope-join' }), CODES.CONV_NOT_FOUND, 'join unknown');
  X.close(); Y.close(); Z.close();
});

mtest('mail/leave: result, event, NOT_PARTICIPANT afterwards, re-join allowed', async () => {
  const { C, W } = await world();
  const rec = record(await C.subscribe({ eventTypes: ['mail.participant.left'] }));
  const conv = (await C.createConversation({ initialParticipants: [{ id: W.agentId }] })).conversation;
  const l = await W.rpc('mail/leave', { conversationId: conv.id, reason: 'busy' });
  assert.equal(l.success, true);
  assert.ok(Number.isInteger(l.leftAt));
  const ev = await rec.waitFor((e) => e.data?.conversationId === conv.id);
  assert.equal(ev.data.participantId, W.agentId);
  assert.equal(ev.data.reason, 'busy');
  const g = await C.getConversation(conv.id, { participants: true });
  assert.equal(g.conversation.participantCount, 1);
  const left = g.participants.find((p) => p.id === W.agentId);
  if (left) assert.ok(Number.isInteger(left.leftAt), 'participant record kept with leftAt');
  await mailErr(W.rpc('mail/leave', { conversationId: conv.id }), CODES.NOT_PARTICIPANT, 'leave twice');
  await mailErr(W.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: { text: 'x' } }), CODES.NOT_PARTICIPANT, 'turn after leave');
  const j = await W.rpc('mail/join', { conversationId: conv.id });
  assert.equal(j.participant.id, W.agentId);
  assert.equal(j.conversation.participantCount, 2);
  W.close();
});

mtest('mail/invite: invited participant, event, ALREADY_JOINED, PERMISSION, CONV_CLOSED', async () => {
  const { C, W } = await world();
  const rec = record(await C.subscribe({ eventTypes: ['mail.participant.joined'] }));
  const X = await rawAgent(B.url);
  const Y = await rawAgent(B.url);
  const conv = (await C.createConversation({ initialParticipants: [{ id: W.agentId, role: 'moderator', permissions: { canInvite: true } }, { id: Y.agentId }] })).conversation;
  const inv = await W.rpc('mail/invite', { conversationId: conv.id, participant: { id: X.agentId, role: 'worker' }, message: 'join us' });
  assert.equal(inv.invited, true);
  if (inv.participant) {
    assert.equal(inv.participant.id, X.agentId);
    assert.equal(inv.participant.role, 'worker');
  }
  await rec.waitFor((e) => e.data?.conversationId === conv.id && e.data.participant?.id === X.agentId);
  const g = await C.getConversation(conv.id, { participants: true });
  assert.ok(g.participants.some((p) => p.id === X.agentId && p.role === 'worker'));
  await mailErr(W.rpc('mail/invite', { conversationId: conv.id, participant: { id: X.agentId } }), CODES.ALREADY_JOINED, 'invite twice');
  // Y has default permissions (canInvite false)
  const Z = await rawAgent(B.url);
  await mailErr(Y.rpc('mail/invite', { conversationId: conv.id, participant: { id: Z.agentId } }), CODES.PERMISSION, 'invite without canInvite');
  await C.closeConversation(conv.id);
  await mailErr(W.rpc('mail/invite', { conversationId: conv.id, participant: { id: Z.agentId } }), CODES.CONV_CLOSED, 'invite on closed');
  W.close(); X.close(); Y.close(); Z.close();
});

mtest('mail/turn: content types, mail.turn.added, NOT_PARTICIPANT, PERMISSION, THREAD/TURN_NOT_FOUND', async () => {
  const { C, W } = await world();
  const rec = record(await C.subscribe({ eventTypes: ['mail.turn.added'] }));
  const conv = (await C.createConversation({ initialParticipants: [{ id: W.agentId }] })).conversation;
  for (const ct of ['text', 'data', 'event', 'reference', 'x-a', 'x-tool-call']) {
    const r = await W.rpc('mail/turn', { conversationId: conv.id, contentType: ct, content: { v: ct }, metadata: { m: ct } });
    assert.equal(r.turn.contentType, ct);
    assert.deepEqual(r.turn.content, { v: ct });
    assert.deepEqual(r.turn.metadata, { m: ct });
    assert.equal(r.turn.participant, W.agentId);
    assert.equal(r.turn.status, 'complete');
    assert.deepEqual(r.turn.source, { type: 'explicit', method: 'mail/turn' });
    const ev = await rec.waitFor((e) => e.data?.turn?.id === r.turn.id);
    assert.equal(ev.data.conversationId, conv.id);
    assert.equal(ev.source, W.agentId);
  }
  for (const bad of ['html', 'x-', '', 'Text']) {
    await mailErr(W.rpc('mail/turn', { conversationId: conv.id, contentType: bad, content: 'c' }), CODES.BAD_CONTENT_TYPE, `contentType ${JSON.stringify(bad)}`);
  }
  const X = await rawAgent(B.url);
  await mailErr(X.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: { text: 'intruder' } }), CODES.NOT_PARTICIPANT, 'outsider turn');
  await mailErr(W.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: {}, threadId: 'thread-nope' }), CODES.THREAD_NOT_FOUND, 'unknown thread');
  await mailErr(W.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: {}, inReplyTo: 'turn-nope' }), CODES.TURN_NOT_FOUND, 'unknown inReplyTo');
  await mailErr(W.rpc('mail/turn', { conversationId: 'conv-nope-turn', contentType: 'text', content: {} }), CODES.CONV_NOT_FOUND, 'unknown conversation');
  // canSend:false participant
  const M = await rawAgent(B.url);
  const conv2 = (await C.createConversation({ initialParticipants: [{ id: M.agentId, role: 'observer', permissions: { canSend: false } }] })).conversation;
  await mailErr(M.rpc('mail/turn', { conversationId: conv2.id, contentType: 'text', content: { text: 'muted' } }), CODES.PERMISSION, 'canSend false');
  // missing required params -> -32602
  const e = await rejects(W.rpc('mail/turn', { conversationId: conv.id, content: 'no type' }));
  assert.equal(e.code, -32602);
  W.close(); X.close(); M.close();
});

mtest('mail/thread/create and mail/thread/list (mail.thread.created, turnCount, errors, pagination)', async () => {
  const { C, W, cpid } = await world();
  const rec = record(await C.subscribe({ eventTypes: ['mail.thread.created'] }));
  const conv = (await C.createConversation({ initialParticipants: [{ id: W.agentId }], initialTurn: { contentType: 'text', content: { text: 'root' } } })).conversation;
  const root = (await C.listTurns({ conversationId: conv.id })).turns[0];
  const th = (await C.createThread({ conversationId: conv.id, rootTurnId: root.id, subject: 'T' })).thread;
  assert.match(th.id, /^thread-[0-9A-HJKMNP-TV-Z]{26}$/);
  assert.equal(th.conversationId, conv.id);
  assert.equal(th.rootTurnId, root.id);
  assert.equal(th.subject, 'T');
  assert.equal(th.turnCount, 0);
  assert.equal(th.createdBy, cpid);
  const ev = await rec.waitFor((e) => e.data?.conversationId === conv.id);
  assert.equal(ev.data.thread.id, th.id);
  await W.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: { text: 'in thread' }, threadId: th.id });
  await W.rpc('mail/turn', { conversationId: conv.id, contentType: 'text', content: { text: 'in thread 2' }, threadId: th.id });
  const sub = (await C.createThread({ conversationId: conv.id, rootTurnId: root.id, parentThreadId: th.id })).thread;
  assert.equal(sub.parentThreadId, th.id);
  const others = [];
  for (let i = 0; i < 3; i++) others.push((await C.createThread({ conversationId: conv.id, rootTurnId: root.id, subject: `o${i}` })).thread.id);
  const top = await C.listThreads({ conversationId: conv.id });
  const topIds = top.threads.map((t) => t.id);
  assert.ok(topIds.includes(th.id));
  assert.equal(top.threads.find((t) => t.id === th.id).turnCount, 2);
  const nested = await C.listThreads({ conversationId: conv.id, parentThreadId: th.id });
  assert.deepEqual(nested.threads.map((t) => t.id), [sub.id]);
  // pagination with cursor
  const seen = [];
  let cursor;
  for (let i = 0; i < 10; i++) {
    const p = await C.listThreads({ conversationId: conv.id, limit: 2, cursor });
    seen.push(...p.threads.map((t) => t.id));
    if (!p.hasMore) break;
    assert.equal(p.nextCursor, p.threads.at(-1).id);
    cursor = p.nextCursor;
  }
  for (const id of [th.id, ...others]) assert.ok(seen.includes(id), `thread pagination lost ${id}`);
  assert.equal(new Set(seen).size, seen.length);
  await mailErr(C.createThread({ conversationId: conv.id, rootTurnId: 'turn-nope' }), CODES.TURN_NOT_FOUND, 'unknown root turn');
  await mailErr(C.createThread({ conversationId: conv.id, rootTurnId: root.id, parentThreadId: 'thread-nope' }), CODES.THREAD_NOT_FOUND, 'unknown parent thread');
  const conv2 = (await C.createConversation()).conversation;
  await mailErr(C.createThread({ conversationId: conv2.id, rootTurnId: root.id }), CODES.CONV_NOT_FOUND, 'root turn of another conversation');
  W.close();
});

mtest('mail/turns/list: cursor pagination asc and desc, filters', async () => {
  const { C, W } = await world();
  const conv = (await C.createConversation({ initialParticipants: [{ id: W.agentId }] })).conversation;
  const ids = [];
  for (let i = 0; i < 7; i++) {
    const who = i % 2 ? W : null;
    const params = { conversationId: conv.id, contentType: i === 3 ? 'data' : 'text', content: { i } };
    const t = who ? (await who.rpc('mail/turn', params)).turn : (await C.recordTurn(params)).turn;
    ids.push(t.id);
  }
  // ascending, pages of 3, cursor via filter.afterTurnId
  let pages = []; let after;
  for (let i = 0; i < 10; i++) {
    const p = await C.listTurns({ conversationId: conv.id, limit: 3, order: 'asc', filter: after ? { afterTurnId: after } : undefined });
    pages.push(p);
    if (p.turns.length) assert.equal(p.nextCursor, p.turns.at(-1).id);
    if (!p.hasMore) break;
    after = p.nextCursor;
  }
  assert.deepEqual(pages.map((p) => p.turns.map((t) => t.id)), [ids.slice(0, 3), ids.slice(3, 6), ids.slice(6)]);
  assert.deepEqual(pages.map((p) => p.hasMore), [true, true, false]);
  // descending, cursor via filter.beforeTurnId
  pages = []; let before;
  for (let i = 0; i < 10; i++) {
    const p = await C.listTurns({ conversationId: conv.id, limit: 3, order: 'desc', filter: before ? { beforeTurnId: before } : undefined });
    pages.push(p);
    if (!p.hasMore) break;
    assert.equal(p.nextCursor, p.turns.at(-1).id);
    before = p.nextCursor;
  }
  const rev = [...ids].reverse();
  assert.deepEqual(pages.map((p) => p.turns.map((t) => t.id)), [rev.slice(0, 3), rev.slice(3, 6), rev.slice(6)]);
  // default order asc, default limit covers all
  assert.deepEqual((await C.listTurns({ conversationId: conv.id })).turns.map((t) => t.id), ids);
  // filters
  const byW = await C.listTurns({ conversationId: conv.id, filter: { participantId: W.agentId } });
  assert.deepEqual(byW.turns.map((t) => t.id), [ids[1], ids[3], ids[5]]);
  const data = await C.listTurns({ conversationId: conv.id, filter: { contentTypes: ['data'] } });
  assert.deepEqual(data.turns.map((t) => t.id), [ids[3]]);
  await mailErr(C.listTurns({ conversationId: 'conv-nope-list' }), CODES.CONV_NOT_FOUND, 'list unknown');
  W.close();
});

mtest('HISTORY_DENIED 10009 for historyAccess none; private turns hidden from others', async () => {
  const { C, W, cpid } = await world();
  const H = await rawAgent(B.url);
  const conv = (await C.createConversation({
    initialParticipants: [{ id: H.agentId, permissions: { historyAccess: 'none' } }, { id: W.agentId }],
    initialTurn: { contentType: 'text', content: { text: 'hello' } },
  })).conversation;
  await mailErr(H.rpc('mail/turns/list', { conversationId: conv.id }), CODES.HISTORY_DENIED, 'turns/list without history');
  await mailErr(H.rpc('mail/replay', { conversationId: conv.id }), CODES.HISTORY_DENIED, 'replay without history');
  const priv = (await C.recordTurn({ conversationId: conv.id, contentType: 'text', content: { text: 'secret' }, visibility: { type: 'private' } })).turn;
  const wl = await W.rpc('mail/turns/list', { conversationId: conv.id });
  assert.ok(!wl.turns.some((t) => t.id === priv.id), 'private turn must be hidden from other participants');
  const cl = await C.listTurns({ conversationId: conv.id });
  assert.ok(cl.turns.some((t) => t.id === priv.id && t.participant === cpid), 'author sees own private turn');
  W.close(); H.close();
});

mtest('mail/summary and mail/replay result shapes', async () => {
  const { C } = await world();
  const rec = record(await C.subscribe({ eventTypes: ['mail.summary.generated'] }));
  const conv = (await C.createConversation({ initialTurn: { contentType: 'text', content: { text: 'a' } } })).conversation;
  const t2 = (await C.recordTurn({ conversationId: conv.id, contentType: 'text', content: { text: 'b' } })).turn;
  const t3 = (await C.recordTurn({ conversationId: conv.id, contentType: 'data', content: { c: 1 } })).turn;
  const s = await C.getConversationSummary({ conversationId: conv.id });
  assert.equal(typeof s.summary, 'string');
  assert.equal(typeof s.generated, 'boolean');
  if (s.generated) await rec.waitFor((e) => e.data?.conversationId === conv.id);
  await mailErr(C.getConversationSummary({ conversationId: 'conv-nope-sum' }), CODES.CONV_NOT_FOUND, 'summary unknown');
  const r = await C.replayConversation({ conversationId: conv.id, fromTurnId: t2.id, limit: 10 });
  assert.deepEqual(r.turns.map((t) => t.id), [t3.id]);
  assert.equal(r.hasMore, false);
  assert.ok(Number.isInteger(r.missedCount));
  const r2 = await C.replayConversation({ conversationId: conv.id, limit: 2 });
  assert.equal(r2.turns.length, 2);
  assert.equal(r2.hasMore, true);
  assert.equal(r2.turns[1].id, t2.id);
  const r3 = await C.replayConversation({ conversationId: conv.id, contentTypes: ['data'] });
  assert.deepEqual(r3.turns.map((t) => t.id), [t3.id]);
  await mailErr(C.replayConversation({ conversationId: 'conv-nope-replay' }), CODES.CONV_NOT_FOUND, 'replay unknown');
});

mtest('intercepted turns: map/send with meta.mail records a data turn and still delivers', async () => {
  const { C, cpid } = await world();
  const A = await connectAgent(B.url, { agentId: uid('icpt') });
  const box = inbox(A);
  const rec = record(await C.subscribe({ eventTypes: ['mail.turn.added'] }));
  const conv = (await C.createConversation({ initialParticipants: [{ id: A.agentId }], initialTurn: { contentType: 'text', content: { text: 'root' } } })).conversation;
  const root = (await C.listTurns({ conversationId: conv.id })).turns[0];
  const th = (await C.createThread({ conversationId: conv.id, rootTurnId: root.id })).thread;
  const res = await C.sendWithMail({ agent: A.agentId }, { task: 'summarize' }, conv.id, { meta: { correlationId: 'c-9' } });
  assert.deepEqual(res.delivered, [A.agentId]);
  const m = await box.waitFor((x) => x.id === res.messageId);
  assert.deepEqual(m.meta, { correlationId: 'c-9', mail: { conversationId: conv.id } });
  const ev = await rec.waitFor((e) => e.data?.turn?.source?.messageId === res.messageId);
  const t = ev.data.turn;
  assert.equal(ev.data.conversationId, conv.id);
  assert.equal(t.contentType, 'data');
  assert.deepEqual(t.content, { task: 'summarize' });
  assert.equal(t.participant, cpid);
  assert.deepEqual(t.source, { type: 'intercepted', messageId: res.messageId });
  assert.equal(t.status, 'complete');
  // with thread: the turn is in the thread and turnCount bumps
  const res2 = await C.sendWithMail({ agent: A.agentId }, { step: 2 }, conv.id, { threadId: th.id });
  const ev2 = await rec.waitFor((e) => e.data?.turn?.source?.messageId === res2.messageId);
  assert.equal(ev2.data.turn.threadId, th.id);
  const threads = await C.listThreads({ conversationId: conv.id });
  assert.equal(threads.threads.find((x) => x.id === th.id).turnCount, 1);
  // the agent (pass-through) replies with the same meta.mail; recorded under its agent id
  const rr = await A.send({ agent: cpid }, { done: true }, { mail: { conversationId: conv.id, inReplyTo: t.id } });
  const ev3 = await rec.waitFor((e) => e.data?.turn?.source?.messageId === rr.messageId);
  assert.equal(ev3.data.turn.participant, A.agentId);
  assert.equal(ev3.data.turn.inReplyTo, t.id);
  const all = await C.listTurns({ conversationId: conv.id });
  assert.ok(all.turns.some((x) => x.id === t.id));
  await A.disconnect();
});

mtest('a bad meta.mail never fails map/send (unknown/closed conversation, bad thread, malformed)', async () => {
  const { C } = await world();
  const A = await connectAgent(B.url, { agentId: uid('badmail') });
  const box = inbox(A);
  const rec = record(await C.subscribe({ eventTypes: ['mail.turn.added'] }));
  const closed = (await C.createConversation({ initialParticipants: [{ id: A.agentId }] })).conversation;
  await C.closeConversation(closed.id);
  const open = (await C.createConversation({ initialParticipants: [{ id: A.agentId }] })).conversation;
  const metas = [
    { mail: { conversationId: 'conv-does-not-exist' } },
    { mail: { conversationId: closed.id } },
    { mail: { conversationId: open.id, threadId: 'thread-nope' } },
    { mail: { conversationId: 42 } },
    { mail: {} },
    { mail: 'garbage' },
  ];
  const sent = [];
  for (const meta of metas) {
    const r = await C.send({ agent: A.agentId }, { m: meta }, meta);
    assert.deepEqual(r.delivered, [A.agentId], `send with meta ${JSON.stringify(meta)}`);
    await box.waitFor((x) => x.id === r.messageId);
    sent.push(r.messageId);
  }
  await settle(C, 300);
  assert.ok(!rec.events.some((e) => sent.includes(e.data?.turn?.source?.messageId)), 'no turn recorded for a bad meta.mail');
  await A.disconnect();
});

mtest('filter.mail: conversationId / participantId / contentType restrict to matching mail.* events', async () => {
  const { C, W } = await world();
  const c1 = (await C.createConversation({ initialParticipants: [{ id: W.agentId }] })).conversation;
  const c2 = (await C.createConversation({ initialParticipants: [{ id: W.agentId }] })).conversation;
  const byConv = record(await C.subscribe({ mail: { conversationId: c1.id } }));
  const byPart = record(await C.subscribe({ mail: { participantId: W.agentId } }));
  const byType = record(await C.subscribe({ mail: { contentType: 'x-special' } }));
  const anyMail = record(await C.subscribe({ mail: {} }));
  await W.rpc('mail/turn', { conversationId: c1.id, contentType: 'text', content: { a: 1 } });
  await C.recordTurn({ conversationId: c2.id, contentType: 'x-special', content: { b: 1 } });
  await W.rpc('mail/turn', { conversationId: c2.id, contentType: 'text', content: { c: 1 } });
  await C.send({ agent: W.agentId }, 'not mail');
  await anyMail.waitFor((e) => e.data?.turn?.content?.c === 1);
  await settle(C, 200);
  assert.ok(byConv.events.length >= 1);
  assert.ok(byConv.events.every((e) => e.data.conversationId === c1.id));
  assert.deepEqual(byPart.events.map((e) => e.data.turn?.content), [{ a: 1 }, { c: 1 }]);
  assert.deepEqual(byType.events.map((e) => e.data.turn?.content), [{ b: 1 }]);
  assert.ok(anyMail.events.every((e) => e.type.startsWith('mail.')), 'mail:{} restricts to mail.* events');
  W.close();
});

mtest('mail methods validate required params with -32602', async () => {
  const { C } = await world();
  for (const [m, p] of [['mail/get', {}], ['mail/turn', { contentType: 'text', content: 1 }], ['mail/turns/list', {}], ['mail/invite', { conversationId: 'conv-x' }], ['mail/thread/create', { conversationId: 'conv-x' }], ['mail/close', {}], ['mail/join', {}], ['mail/leave', {}], ['mail/thread/list', {}], ['mail/summary', {}], ['mail/replay', {}]]) {
    const e = await rejects(C.callExtension(m, p), m);
    assert.equal(e.code, -32602, `${m} ${JSON.stringify(p)} -> ${e.code}`);
  }
});
