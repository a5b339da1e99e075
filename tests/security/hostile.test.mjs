// Hostile input through the real binary: malformed frames, limits, floods,
// half-open and slowloris peers. MAP.md §1, §14.1; C-HABITS pitfalls 9 and
// the TLS/limits section. Every case checks a precise error (code and
// data.field where relevant) or a close with the right code, then that the
// same connection (when it was not closed) and a bystander connection that
// was opened before the test still work.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { before, after } from 'node:test';
import {
  startBroker, btest, RawWs, closeAll, sleep, uid, T, withTimeout,
  tempDir, writeFile, assertError, stillWorks, closed, rawOpen, tcp,
} from './lib.mjs';

const HS = 2; // --handshake-timeout seconds on the main broker
const H = { broker: null };
let bystander;

before(async () => {
  H.broker = await startBroker({
    args: ['--max-message', '262144', '--max-depth', '64', '--max-string', '4096', '--handshake-timeout', String(HS),
      '--max-subscriptions', '5', '--ping-interval', '5'],
  });
  bystander = await RawWs.open(H.broker.url);
  await bystander.connect({ name: 'bystander' });
});
after(async () => { await closeAll(); if (H.broker) await H.broker.stop(); });

const url = () => H.broker.url;

/** A case on a fresh connected socket; afterwards the bystander must still work. */
function hcase(name, fn, opts) {
  btest(name, H, async (ctx) => {
    const raw = await RawWs.open(url());
    await raw.connect();
    await fn(raw, ctx);
    await stillWorks(bystander);
    raw.close();
  }, opts);
}

/** Send text, expect one error reply with code (and field); then the socket works. */
async function expectErr(raw, text, code, field) {
  raw.send(text);
  const f = await raw.waitFor((x) => 'error' in x || 'result' in x, T, `reply to ${String(text).slice(0, 60)}`);
  assertError(f, code, field === undefined ? {} : { field });
  await stillWorks(raw);
  return f;
}

async function expectCall(raw, method, params, code, field) {
  const f = await raw.call(method, params);
  assertError(f, code, field === undefined ? {} : { field });
  await stillWorks(raw);
  return f;
}

const req = (method, params, id = 77) => JSON.stringify({ jsonrpc: '2.0', id, method, params });

// ---- framing / JSON -------------------------------------------------------

hcase('H01 truncated JSON -> -32700', (raw) => expectErr(raw, '{"jsonrpc":"2.0","id":1,"method":"map/agents/list"', -32700));
hcase('H02 garbage text -> -32700', (raw) => expectErr(raw, '\u0001\u0002 not json }}}', -32700));
hcase('H03 empty message -> -32700', (raw) => expectErr(raw, '', -32700));
hcase('H04 bare scalar -> -32600', (raw) => expectErr(raw, '42', -32600));
hcase('H05 batch array -> -32600, never an array reply', async (raw) => {
  const f = await expectErr(raw, `[${req('map/agents/list', {})},${req('map/agents/list', {}, 78)}]`, -32600);
  assert.ok(!Array.isArray(f));
});
hcase('H06 empty method -> -32600 field method', (raw) => expectErr(raw, req('', {}), -32600, 'method'));
hcase('H07 method not a string -> -32600 field method', (raw) => expectErr(raw, '{"jsonrpc":"2.0","id":1,"method":42}', -32600, 'method'));
hcase('H08 200-char method -> -32600 field method', (raw) => expectErr(raw, req('m'.repeat(200), {}), -32600, 'method'));
hcase('H09 missing jsonrpc -> -32600 field jsonrpc', (raw) => expectErr(raw, '{"id":1,"method":"map/agents/list"}', -32600, 'jsonrpc'));
hcase('H10 id is an object -> -32600 field id', (raw) => expectErr(raw, '{"jsonrpc":"2.0","id":{"a":1},"method":"map/agents/list"}', -32600, 'id'));
hcase('H11 duplicate keys -> -32700', (raw) => expectErr(raw, '{"jsonrpc":"2.0","id":1,"method":"map/agents/list","method":"map/inject"}', -32700));
hcase('H12 huge number literal (1e400) -> -32700', (raw) => expectErr(raw, '{"jsonrpc":"2.0","id":1e400,"method":"map/agents/list"}', -32700));
hcase('H13 huge integer in protocolVersion -> -32700 or -32602, never accepted', async (raw) => {
  raw.send('{"jsonrpc":"2.0","id":5,"method":"map/connect","params":{"protocolVersion":123456789012345678901234567890,"participantType":"client"}}');
  const f = await raw.waitFor((x) => 'error' in x || 'result' in x);
  assert.ok(f.error && [-32700, -32602].includes(f.error.code), f.__raw);
  await stillWorks(raw);
});
hcase('H14 10k-deep nesting -> -32700 (depth), connection survives', (raw) => expectErr(raw, `${'['.repeat(10000)}${']'.repeat(10000)}`, -32700));
hcase('H15 10k-deep nesting inside params -> -32700', (raw) => expectErr(raw, `{"jsonrpc":"2.0","id":1,"method":"map/agents/list","params":{"a":${'{"a":'.repeat(10000)}1${'}'.repeat(10000)}}}`, -32700));
hcase('H16 depth 65 refused, depth 60 accepted (limit is exact)', async (raw) => {
  const nest = (n) => `${'['.repeat(n)}${']'.repeat(n)}`;
  await expectErr(raw, `{"jsonrpc":"2.0","id":1,"method":"map/agents/list","params":{"x":${nest(64)}}}`, -32700);
  raw.send(`{"jsonrpc":"2.0","id":2,"method":"map/agents/list","params":{"x":${nest(58)}}}`);
  const ok = await raw.waitFor((x) => x.id === 2);
  assert.ok(ok.result, ok.__raw);
});
hcase('H17 stray response object is ignored; notification with bad params gets no reply', async (raw) => {
  raw.send('{"jsonrpc":"2.0","id":999,"result":{}}');
  raw.send('{"jsonrpc":"2.0","method":"map/agents/register","params":{"agentId":5}}');
  await raw.expectNone((f) => f.id === 999 || 'error' in f, 300);
  await stillWorks(raw);
});
hcase('H18 params is an array -> -32602 or -32600', async (raw) => {
  raw.send('{"jsonrpc":"2.0","id":3,"method":"map/agents/list","params":[1,2]}');
  const f = await raw.waitFor((x) => x.id === 3 || x.id === null);
  assert.ok(f.error && [-32600, -32602].includes(f.error.code), f.__raw);
  await stillWorks(raw);
});

btest('H19 invalid UTF-8 in a text frame -> close 1007; bystander unaffected', H, async () => {
  const raw = await RawWs.open(url());
  await raw.connect();
  raw.ws.send(Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0xff, 0xfe, 0x22, 0x7d]), { binary: false });
  const c = await closed(raw);
  assert.equal(c.code, 1007);
  await stillWorks(bystander);
});

btest('H20 oversize message after auth (> --max-message) -> close 1009', H, async () => {
  const raw = await RawWs.open(url());
  await raw.connect();
  raw.send(req('map/agents/list', { pad: 'x'.repeat(300000) }));
  assert.equal((await closed(raw)).code, 1009);
  await stillWorks(bystander);
});

btest('H21 oversize fragmented message -> close 1009 (cap checked before buffering)', H, async () => {
  const raw = await RawWs.open(url());
  await raw.connect();
  const chunk = 'x'.repeat(64 * 1024);
  raw.ws.send(`{"jsonrpc":"2.0","id":1,"method":"map/agents/list","params":{"p":"${chunk}`, { fin: false });
  for (let i = 0; i < 6 && !raw.closeInfo; i++) {
    raw.ws.send(chunk, { fin: false });
    await sleep(10);
  }
  assert.equal((await closed(raw)).code, 1009);
  await stillWorks(bystander);
});

hcase('H22 fragmented message under the cap is reassembled and answered', async (raw) => {
  const parts = [`{"jsonrpc":"2.0","id":41,"method":"map/agents/list","params":{"payload":"`, 'y'.repeat(50000), 'z'.repeat(50000), '"}}'];
  parts.forEach((p, i) => raw.ws.send(p, { fin: i === parts.length - 1 }));
  const f = await raw.waitFor((x) => x.id === 41);
  assert.ok(f.result, f.__raw);
});

btest('H23 oversize message before authentication (> --max-message-preauth) -> close 1009; after auth the larger cap applies', H, async (ctx) => {
  const dir = tempDir();
  const key = crypto.randomBytes(16).toString('hex');
  const tf = writeFile(dir, 'tokens', `${key} p1\n`);
  const b = await ctx.broker({ args: ['--tokens', tf, '--max-message-preauth', '4096', '--max-message', '131072'] });
  const raw = await RawWs.open(b.url);
  raw.send(req('map/connect', { protocolVersion: 1, participantType: 'client', name: 'x'.repeat(8000) }));
  assert.equal((await closed(raw)).code, 1009);
  const ok = await RawWs.open(b.url);
  await ok.connect({ auth: { method: 'api-key', token: key } });
  const f = await ok.call('map/agents/list', { pad: 'p'.repeat(20000) });
  assert.ok(f.result, f.__raw);
  ok.close();
  await stillWorks(bystander);
});

// ---- wrong types in every field -------------------------------------------

const conn = (p) => ({ protocolVersion: 1, participantType: 'client', ...p });
hcase('H24 connect.protocolVersion "1" -> -32602', (raw) => expectCall(raw, 'map/connect', conn({ protocolVersion: '1' }), -32602, 'protocolVersion'));
hcase('H25 connect.participantType 5 / "robot" -> -32602', async (raw) => {
  await expectCall(raw, 'map/connect', conn({ participantType: 5 }), -32602, 'participantType');
  await expectCall(raw, 'map/connect', conn({ participantType: 'robot' }), -32602, 'participantType');
});
hcase('H26 connect.participantId {} / name [] / resumeToken 1 -> -32602', async (raw) => {
  await expectCall(raw, 'map/connect', conn({ participantId: {} }), -32602, 'participantId');
  await expectCall(raw, 'map/connect', conn({ name: [] }), -32602, 'name');
  await expectCall(raw, 'map/connect', conn({ resumeToken: 1 }), -32602, 'resumeToken');
});
hcase('H27 connect.auth "x" / disconnectPolicy "x" / reclaimAgents [1] -> -32602', async (raw) => {
  await expectCall(raw, 'map/connect', conn({ auth: 'x' }), -32602, 'auth');
  await expectCall(raw, 'map/connect', conn({ disconnectPolicy: 'x' }), -32602, 'disconnectPolicy');
  await expectCall(raw, 'map/connect', conn({ reclaimAgents: [1] }), -32602, 'reclaimAgents');
});
hcase('H28 register: agentId 5 / name 1 / scopes "x" / metadata "x" -> -32602', async (raw) => {
  await expectCall(raw, 'map/agents/register', { agentId: 5 }, -32602, 'agentId');
  await expectCall(raw, 'map/agents/register', { name: 1 }, -32602, 'name');
  await expectCall(raw, 'map/agents/register', { scopes: 'x' }, -32602, 'scopes');
  await expectCall(raw, 'map/agents/register', { metadata: 'x' }, -32602, 'metadata');
});
hcase('H29 register: visibility "everyone" / parent 7 -> -32602', async (raw) => {
  await expectCall(raw, 'map/agents/register', { visibility: 'everyone' }, -32602, 'visibility');
  await expectCall(raw, 'map/agents/register', { parent: 7 }, -32602, 'parent');
});
hcase('H30 send: to missing / to 5 / to {} -> error, nothing delivered', async (raw) => {
  for (const p of [{ payload: {} }, { to: 5, payload: {} }, { to: {}, payload: {} }]) {
    const f = await raw.call('map/send', p);
    assert.ok(f.error && [-32602, 2000].includes(f.error.code), f.__raw);
  }
  await stillWorks(raw);
});
hcase('H31 subscribe: filter "x" / filter.eventTypes 5 -> -32602', async (raw) => {
  await expectCall(raw, 'map/subscribe', { filter: 'x' }, -32602, 'filter');
  const f = await raw.call('map/subscribe', { filter: { eventTypes: 5 } });
  assertError(f, -32602);
  await stillWorks(raw);
});
hcase('H32 scopes: create name 1 / join scopeId [] -> -32602', async (raw) => {
  await expectCall(raw, 'map/scopes/create', { name: 1 }, -32602, 'name');
  await expectCall(raw, 'map/scopes/join', { scopeId: [], agentId: 'a' }, -32602, 'scopeId');
});
hcase('H33 mail: create subject 1 / turn conversationId 5 -> -32602 (skipped without mail)', async (raw, ctx) => {
  const probe = await raw.call('mail/create', { subject: 1 });
  if (probe.error?.code === -32601) { ctx.t.skip('mail/* not available'); return; }
  assertError(probe, -32602, 'subject');
  await expectCall(raw, 'mail/turn', { conversationId: 5, content: { type: 'text', text: 'x' } }, -32602, 'conversationId');
});

// ---- ids and strings ---------------------------------------------------------

hcase('H34 ids with / # * % -> -32602 field agentId', async (raw) => {
  for (const id of ['a/b', 'a#b', 'a*', '%2e%2e', '../etc']) await expectCall(raw, 'map/agents/register', { agentId: id }, -32602, 'agentId');
});
hcase('H35 ids with control characters -> -32602; an escaped NUL anywhere -> -32700 (jansson refuses \\u0000)', async (raw) => {
  for (const id of ['a\nb', '\u001b[31m', 'a\u007f', '\t']) await expectCall(raw, 'map/agents/register', { agentId: id }, -32602, 'agentId');
  const f = await expectErr(raw, req('map/agents/register', { agentId: 'a\u0000b' }), -32700);
  assert.strictEqual(f.id, null);
});
hcase('H36 300-char id -> -32602; 256-char id accepted', async (raw) => {
  await expectCall(raw, 'map/agents/register', { agentId: 'a'.repeat(300) }, -32602, 'agentId');
  const r = await raw.rpc('map/agents/register', { agentId: `b${'c'.repeat(255)}` });
  assert.equal(r.agent.id.length, 256);
});
hcase('H37 string over --max-string in a non-payload field -> -32602 with its path', async (raw) => {
  await expectCall(raw, 'map/agents/register', { description: 'd'.repeat(5000) }, -32602, 'description');
  await expectCall(raw, 'map/subscribe', { filter: { eventTypes: ['x'.repeat(5000)] } }, -32602, 'filter.eventTypes[0]');
});
hcase('H38 large strings inside the payload are not capped by --max-string', async (raw) => {
  const me = uid('big');
  await raw.rpc('map/agents/register', { agentId: me });
  const r = await raw.call('map/send', { to: { agent: me }, payload: { text: 'p'.repeat(100000) } });
  assert.ok(r.result, r.__raw);
});

// ---- resource limits ------------------------------------------------------------

hcase('H39 --max-subscriptions: the 6th subscription is refused, the others keep working', async (raw) => {
  for (let i = 0; i < 5; i++) await raw.rpc('map/subscribe', {});
  const f = await raw.call('map/subscribe', {});
  assert.ok(f.error && f.error.code >= 4000 && f.error.code < 5000, f.__raw);
  await stillWorks(raw);
});

btest('H40 request flood -> 4001 with retryAfterMs; served again after the window', H, async (ctx) => {
  const b = await ctx.broker({ args: ['--rate-limit', '20'] });
  const raw = await RawWs.open(b.url);
  await raw.connect();
  const ids = [];
  for (let i = 0; i < 100; i++) { const id = 1000 + i; ids.push(id); raw.send(req('map/agents/list', {}, id)); }
  const replies = await Promise.all(ids.map((id) => raw.waitFor((x) => x.id === id)));
  const limited = replies.filter((r) => r.error?.code === 4001);
  assert.ok(limited.length >= 50, `expected most of the flood refused, got ${limited.length}`);
  assert.ok(limited[0].error.data.retryAfterMs > 0);
  assert.ok(replies.some((r) => r.result));
  await sleep(1100);
  await stillWorks(raw);
  const other = await RawWs.open(b.url);
  await other.connect();
  await stillWorks(other);
  raw.close(); other.close();
});

btest('H41 connection flood from one IP -> refused beyond --max-connections-per-ip; slots come back', H, async (ctx) => {
  const b = await ctx.broker({ args: ['--max-connections-per-ip', '4'] });
  const held = [];
  for (let i = 0; i < 4; i++) { const r = await RawWs.open(b.url); await r.connect(); held.push(r); }
  await assert.rejects(rawOpen(b.url), /Unexpected server response|closed|socket hang up|ECONNRESET/);
  held[0].close();
  await closed(held[0]);
  await sleep(100);
  const again = await RawWs.open(b.url);
  await again.connect();
  for (const r of held.slice(1)) await stillWorks(r);
  again.close();
  for (const r of held) r.close();
});

btest('H42 --max-connections total cap', H, async (ctx) => {
  const b = await ctx.broker({ args: ['--max-connections', '3'] });
  const held = [];
  for (let i = 0; i < 3; i++) { const r = await RawWs.open(b.url); await r.connect(); held.push(r); }
  await assert.rejects(rawOpen(b.url));
  for (const r of held) await stillWorks(r);
  for (const r of held) r.close();
});

// ---- half-open / slow peers ------------------------------------------------------

btest('H43 half-open TCP (connect, send nothing) is closed by the handshake timeout', H, async () => {
  const c = await tcp(H.broker.port);
  const t0 = Date.now();
  await withTimeout(c.closedP, (HS + 8) * 1000, 'idle TCP close');
  assert.ok(Date.now() - t0 >= (HS - 1) * 1000, 'closed too early to be the timeout');
  await stillWorks(bystander);
});

btest('H44 partial HTTP upgrade (headers never finished) is closed', H, async () => {
  const c = await tcp(H.broker.port);
  c.sock.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n');
  await withTimeout(c.closedP, (HS + 8) * 1000, 'partial upgrade close');
  await stillWorks(bystander);
});

btest('H45 slowloris: headers trickled one byte at a time do not keep the connection alive', H, async () => {
  const c = await tcp(H.broker.port);
  const hdr = 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ' + 'a'.repeat(400);
  let i = 0;
  let done = false;
  c.closedP.then(() => { done = true; });
  const t0 = Date.now();
  while (!done && Date.now() - t0 < (HS + 15) * 1000) {
    if (i < hdr.length) c.sock.write(hdr[i++]);
    await sleep(200);
  }
  assert.ok(done, 'slowloris connection still open');
  assert.ok(i < hdr.length, 'the whole header was sent before the close');
  await stillWorks(bystander);
});

btest('H46 WebSocket open but no map/connect -> closed 1008 after the handshake timeout', H, async () => {
  const raw = await RawWs.open(url());
  const c = await closed(raw, (HS + 8) * 1000);
  assert.equal(c.code, 1008);
  await stillWorks(bystander);
});

btest('H47 binary frame carrying JSON is handled like text (or refused), never crashes', H, async () => {
  const raw = await RawWs.open(url());
  await raw.connect();
  raw.ws.send(Buffer.from(req('map/agents/list', {}, 55)), { binary: true });
  const f = await Promise.race([raw.waitFor((x) => x.id === 55 || 'error' in x, 2000).catch(() => null), raw.closed]);
  if (f && 'code' in f && !('jsonrpc' in f)) assert.ok([1003, 1007, 1008].includes(f.code), JSON.stringify(f));
  else { assert.ok(f, 'no reply to a binary frame'); await stillWorks(raw); }
  await stillWorks(bystander);
  raw.close();
});
