// Observers (docs/observers.md) through the real binary: the REST API, the
// WebSocket /observe and SSE streams with (epoch, seq) resume, errors, and a
// stalled reader that must not slow anyone else down.
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { btest, connectClient, connectAgent, sleep, uid, withTimeout, T } from './lib/broker.mjs';

const http = (b, p, init) => fetch(`http://127.0.0.1:${b.port}${p}`, init);
async function getJson(b, p, status = 200) {
  const r = await http(b, p);
  const body = await r.json();
  assert.equal(r.status, status, `${p}: ${JSON.stringify(body)}`);
  return body;
}

/** A WebSocket observer that records every stream message. */
function observe(b, query) {
  const ws = new WebSocket(`ws://127.0.0.1:${b.port}/observe${query ? `?${query}` : ''}`);
  const msgs = [];
  let closed = null;
  const waiters = [];
  ws.on('message', (d) => {
    msgs.push(JSON.parse(String(d)));
    for (const w of [...waiters]) if (w.pred()) { waiters.splice(waiters.indexOf(w), 1); w.resolve(); }
  });
  ws.on('close', (code) => { closed = code; for (const w of [...waiters]) if (w.pred()) w.resolve(); });
  ws.on('error', () => {});
  return {
    ws, msgs,
    get closed() { return closed; },
    turns() { return msgs.filter((m) => m.type === 'turn_added'); },
    until(pred, ms = T, label = 'observer') {
      if (pred()) return Promise.resolve();
      let w;
      const p = new Promise((resolve) => { w = { pred, resolve }; waiters.push(w); });
      return withTimeout(p, ms, label);
    },
  };
}

/** Read an SSE response into parsed events until pred() holds. */
async function sse(b, p, headers, pred, ms = T) {
  const ac = new AbortController();
  const r = await http(b, p, { headers, signal: ac.signal });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /text\/event-stream/);
  const events = [];
  const reader = r.body.getReader();
  let buf = '';
  const dec = new TextDecoder();
  await withTimeout((async () => {
    while (!pred(events)) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const ev = {};
        for (const line of block.split('\n')) {
          const k = line.slice(0, line.indexOf(':'));
          const v = line.slice(line.indexOf(':') + 1).trimStart();
          if (k === 'data') ev.data = JSON.parse(v); else if (k) ev[k] = v;
        }
        if (ev.data) events.push(ev);
      }
    }
  })(), ms, `SSE ${p}`);
  ac.abort();
  return events;
}

async function world(b) {
  const C = await connectClient(b.url);
  const A = await connectAgent(b.url, { agentId: uid('obs-agent'), name: 'writer', role: 'worker' });
  const conv = await C.callExtension('mail/create', {
    subject: 'observed', initialParticipants: [{ id: A.agentId }],
    initialTurn: { contentType: 'text', content: { text: 't1' } },
  });
  const cid = conv.conversation.id;
  const turn = (text, extra = {}) => A.callExtension('mail/turn', { conversationId: cid, contentType: 'text', content: { text }, ...extra });
  return { C, A, cid, turn };
}

btest('REST: conversations, turns pagination, threads, tree, close; agents, messages, tree; audit; errors', async (ctx) => {
  const b = await ctx.broker({});
  const { C, A, cid, turn } = await world(b);
  const t2 = await turn('t2');
  await turn('t3');
  await C.callExtension('mail/thread/create', { conversationId: cid, rootTurnId: t2.turn.id, subject: 'side' });
  const child = await C.callExtension('mail/create', { subject: 'kid', parentConversationId: cid });
  await C.send({ agent: A.agentId }, { hello: 1 });

  const list = await getJson(b, '/api/conversations');
  assert.deepEqual(list.conversations.map((c) => c.id), [cid, child.conversation.id]);
  const page1 = await getJson(b, '/api/conversations?limit=1');
  assert.equal(page1.hasMore, true);
  const page2 = await getJson(b, `/api/conversations?limit=1&cursor=${page1.nextCursor}`);
  assert.deepEqual(page2.conversations.map((c) => c.id), [child.conversation.id]);
  assert.deepEqual((await getJson(b, `/api/conversations?parent=${cid}`)).conversations.map((c) => c.id), [child.conversation.id]);
  assert.equal((await getJson(b, '/api/conversations?status=completed')).conversations.length, 0);

  const one = await getJson(b, `/api/conversations/${cid}`);
  assert.equal(one.conversation.subject, 'observed');
  assert.equal(one.participants.length, 2);
  assert.equal(one.threads.length, 1);
  assert.deepEqual(one.children.map((c) => c.id), [child.conversation.id]);

  const tp = await getJson(b, `/api/conversations/${cid}/turns?limit=2`);
  assert.deepEqual(tp.turns.map((t) => t.seq), [1, 2]);
  assert.equal(tp.hasMore, true);
  assert.equal(tp.nextCursor, 2);
  const tp2 = await getJson(b, `/api/conversations/${cid}/turns?after=${tp.nextCursor}`);
  assert.deepEqual(tp2.turns.map((t) => t.content.text), ['t3']);
  assert.equal(tp2.hasMore, false);
  const desc = await getJson(b, `/api/conversations/${cid}/turns?order=desc&limit=2`);
  assert.deepEqual(desc.turns.map((t) => t.seq), [3, 2]);

  assert.equal((await getJson(b, `/api/conversations/${cid}/threads`)).threads[0].subject, 'side');
  const tree = await getJson(b, `/api/conversations/${cid}/tree`);
  assert.deepEqual(tree.tree.children.map((n) => n.conversation.id), [child.conversation.id]);

  const agents = await getJson(b, '/api/agents?role=worker');
  assert.deepEqual(agents.agents.map((a) => a.id), [A.agentId]);
  assert.equal((await getJson(b, `/api/agents/${A.agentId}`)).agent.name, 'writer');
  const msgs = await getJson(b, `/api/agents/${A.agentId}/messages`);
  assert.equal(msgs.messages[0].direction, 'received');
  assert.deepEqual(msgs.messages[0].message.payload, { hello: 1 });
  const atree = await getJson(b, '/api/agents/tree');
  assert.ok(atree.roots.some((n) => n.agent.id === A.agentId));

  // close through REST, then again -> 409
  let r = await http(b, `/api/conversations/${cid}/close`, { method: 'POST', body: JSON.stringify({ reason: 'done', summary: 'all good' }) });
  assert.equal(r.status, 200);
  assert.equal((await r.json()).conversation.status, 'completed');
  r = await http(b, `/api/conversations/${cid}/close`, { method: 'POST' });
  assert.equal(r.status, 409);
  const audit = await getJson(b, '/api/audit');
  assert.equal(audit.entries[0].action, 'mail/close');
  assert.equal(audit.entries[0].target, cid);

  // errors: status + JSON body with a message
  for (const [p, st] of [['/api/nope', 404], ['/api/conversations/conv-missing', 404], [`/api/conversations/${cid}/turns?limit=0`, 400],
    [`/api/conversations/${cid}/turns?after=x`, 400], [`/api/conversations/${cid}/turns?order=up`, 400], ['/api/agents/nobody', 404],
    ['/api/conversations/bad*id', 400], [`/api/conversations/${cid}/what`, 404], ['/nothing-here', 404]]) {
    const e = await getJson(b, p, st);
    assert.ok(e.error && e.error.message, `${p} has an error message`);
  }
  r = await http(b, `/api/conversations/${cid}`, { method: 'DELETE' });
  assert.equal(r.status, 405);
  r = await http(b, `/api/conversations/${cid}/turns`, { method: 'POST' });
  assert.equal(r.status, 405);

  const h = await getJson(b, '/healthz');
  assert.equal(h.status, 'ok');
  assert.equal(h.store.backend, 'memory');
  const m = await (await http(b, '/metrics')).text();
  for (const k of ['mapbroker_connections ', 'mapbroker_messages_routed_total 1', 'mapbroker_turns_recorded_total', 'mapbroker_queue_bytes', 'mapbroker_dropped_total', 'mapbroker_store_commit_seconds_bucket{le="+Inf"}']) {
    assert.ok(m.includes(k), `metrics has ${k}`);
  }
});

btest('WebSocket /observe: snapshot, replay after seq exactly once, live turns, reconnect gets exactly the missed turns', async (ctx) => {
  const b = await ctx.broker({});
  const { cid, turn, C } = await world(b);
  await turn('t2');
  const o = observe(b, `conversation=${cid}&after=1`);
  await o.until(() => o.turns().length === 1);
  assert.equal(o.msgs[0].type, 'hello');
  assert.equal(o.msgs[0].lastSeq, 2);
  assert.equal(o.msgs[1].type, 'conversation_update');
  assert.equal(o.msgs[1].reason, 'snapshot');
  assert.equal(o.msgs[1].participants.length, 2);
  assert.deepEqual(o.turns().map((m) => m.seq), [2]);
  await turn('t3', { metadata: { handoff_target: C.connectResult.participantId } });
  await o.until(() => o.turns().length === 2);
  assert.equal(o.turns()[1].turn.metadata.handoff_target, C.connectResult.participantId);
  const epoch = o.msgs[0].epoch;
  const last = o.turns().at(-1).seq;
  o.ws.close();
  await turn('t4');
  await turn('t5');
  const o2 = observe(b, `conversation=${cid}&after=${last}&epoch=${epoch}`);
  await o2.until(() => o2.turns().length === 2);
  await sleep(100);
  assert.deepEqual(o2.turns().map((m) => m.turn.content.text), ['t4', 't5'], 'exactly the missed turns, no duplicates');
  // conversation updates: participant joined, thread created, closed
  const Bx = await connectAgent(b.url, { agentId: uid('late') });
  await C.callExtension('mail/invite', { conversationId: cid, participant: { id: Bx.agentId } });
  await C.callExtension('mail/close', { conversationId: cid, reason: 'enough' });
  await o2.until(() => o2.msgs.some((m) => m.reason === 'closed'));
  const reasons = o2.msgs.filter((m) => m.type === 'conversation_update').map((m) => m.reason);
  assert.deepEqual(reasons, ['snapshot', 'participant_joined', 'closed']);
  assert.equal(o2.msgs.find((m) => m.reason === 'closed').conversation.status, 'completed');
});

btest('observer errors: unknown conversation, other epoch, position beyond the newest turn, bad after', async (ctx) => {
  const b = await ctx.broker({});
  const { cid } = await world(b);
  for (const [q, code] of [['conversation=conv-nope', 'not_found'], [`conversation=${cid}&epoch=01AAAAAAAAAAAAAAAAAAAAAAAA`, 'epoch_mismatch'],
    [`conversation=${cid}&after=99`, 'position_out_of_range'], [`conversation=${cid}&after=abc`, 'bad_request']]) {
    const o = observe(b, q);
    await o.until(() => o.closed !== null, T, q);
    const err = o.msgs.find((m) => m.type === 'error');
    assert.equal(err && err.code, code, q);
    assert.ok(err.message.length > 0);
  }
  // SSE: same contract over HTTP
  const r = await http(b, `/api/conversations/${cid}/stream?after=42`);
  const text = await r.text();
  assert.match(text, /event: error/);
  assert.match(text, /position_out_of_range/);
  const nf = await http(b, '/api/conversations/conv-nope/stream');
  assert.equal(nf.status, 404);
});

btest('SSE: turns carry id epoch:seq; Last-Event-ID resumes exactly; the global feed reports new conversations', async (ctx) => {
  const b = await ctx.broker({});
  const { cid, turn, C } = await world(b);
  await turn('t2');
  await turn('t3');
  const evs = await sse(b, `/api/conversations/${cid}/stream`, {}, (e) => e.filter((x) => x.event === 'turn_added').length === 3);
  const turns = evs.filter((e) => e.event === 'turn_added');
  const epoch = evs[0].data.epoch;
  assert.deepEqual(turns.map((e) => e.id), [1, 2, 3].map((n) => `${epoch}:${n}`));
  await turn('t4');
  const resumed = await sse(b, `/api/conversations/${cid}/stream`, { 'Last-Event-ID': `${epoch}:2` },
    (e) => e.filter((x) => x.event === 'turn_added').length === 2);
  assert.deepEqual(resumed.filter((e) => e.event === 'turn_added').map((e) => e.data.turn.content.text), ['t3', 't4']);
  const bad = await http(b, `/api/conversations/${cid}/stream`, { headers: { 'Last-Event-ID': `01AAAAAAAAAAAAAAAAAAAAAAAA:1` } });
  assert.match(await bad.text(), /epoch_mismatch/);

  const feed = sse(b, '/api/stream', {}, (e) => e.some((x) => x.data.reason === 'created'));
  await sleep(150);
  const fresh = await C.callExtension('mail/create', { subject: 'brand new' });
  const got = await feed;
  assert.equal(got.find((x) => x.data.reason === 'created').data.conversationId, fresh.conversation.id);
});

btest('slow consumers: a stalled observer gets an overflow notice and is cut off; the others see every turn promptly', async (ctx) => {
  const b = await ctx.broker({ args: ['--queue-max-count', '64', '--queue-max-bytes', '262144', '--slow-consumer-ms', '6000'] });
  const { cid, A } = await world(b);
  const stalled = observe(b, `conversation=${cid}`);
  const never = observe(b, `conversation=${cid}`); // stalls and never reads again
  await stalled.until(() => stalled.turns().length === 1);
  await never.until(() => never.turns().length === 1);
  stalled.ws._socket.pause(); // stop reading: the kernel buffers fill, then the broker's queue
  never.ws._socket.pause();
  const fast = [observe(b, `conversation=${cid}`), observe(b, `conversation=${cid}`)];
  for (const f of fast) await f.until(() => f.turns().length === 1);
  const big = 'x'.repeat(32768);
  const N = 600;
  const t0 = Date.now();
  const sentAt = new Map();
  for (let i = 0; i < N; i++) {
    sentAt.set(i, Date.now());
    await A.callExtension('mail/turn', { conversationId: cid, contentType: 'text', content: { text: `n${i}`, pad: big } });
  }
  for (const f of fast) await f.until(() => f.turns().length === N + 1, 20000, 'fast observer');
  const elapsed = Date.now() - t0;
  for (const f of fast) {
    assert.deepEqual(f.turns().map((m) => m.seq), Array.from({ length: N + 1 }, (_, i) => i + 1), 'gapless, in order');
    assert.equal(f.msgs.some((m) => m.type === 'overflow'), false);
  }
  console.log(`# ${N} turns of ~32 KiB reached 2 live observers in ${elapsed} ms while a third was stalled`);
  // queues stay bounded: the stalled observer's backlog never exceeds the limits
  const m = await (await http(b, '/metrics')).text();
  const qb = Number(/mapbroker_queue_bytes (\d+)/.exec(m)[1]);
  assert.ok(qb <= 3 * (262144 + 65536), `queued bytes bounded (${qb})`);
  assert.ok(Number(/mapbroker_dropped_total (\d+)/.exec(m)[1]) > 0, 'something was dropped for the stalled reader');
  // the stalled reader, once it reads again, gets what was queued, then an overflow notice, then the close
  stalled.ws._socket.resume();
  await stalled.until(() => stalled.closed !== null, 15000, 'overflowed observer closed after its notice');
  assert.equal(stalled.msgs.at(-1).type, 'overflow');
  const ov = stalled.msgs.find((x) => x.type === 'overflow');
  assert.ok(ov, 'overflow notice received');
  const seen = stalled.turns().map((x) => x.seq);
  assert.equal(ov.resumeAfter, seen.at(-1), 'resumeAfter names the last turn it got');
  // resuming from there yields exactly the rest
  const again = observe(b, `conversation=${cid}&after=${ov.resumeAfter}`);
  await again.until(() => again.turns().length === N + 1 - ov.resumeAfter, 15000, 'resumed observer');
  assert.equal(again.turns()[0].seq, ov.resumeAfter + 1);
  // the reader that never drains is cut off at the deadline (--slow-consumer-ms)
  let closedSlow = 0;
  for (let i = 0; i < 60 && !closedSlow; i++) {
    closedSlow = Number(/mapbroker_slow_consumers_closed_total (\d+)/.exec(await (await http(b, '/metrics')).text())[1]);
    if (!closedSlow) await sleep(250);
  }
  assert.equal(closedSlow, 1, 'the never-draining observer was disconnected');
  never.ws.terminate();
});
