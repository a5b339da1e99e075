// MAP.md §1.2 rules 6-8, §1.3, §14, §16 items 1-2: protocol errors at the frame level.
import assert from 'node:assert/strict';
import {
  useBroker, btest, RawWs, connectAgent, inbox, withTimeout, T, sleep, uid,
} from './lib/broker.mjs';

const B = useBroker();

function assertError(frame, code, { id, category } = {}) {
  assert.ok(frame.error, `expected an error response, got ${frame.__raw ?? JSON.stringify(frame)}`);
  assert.equal(frame.jsonrpc, '2.0');
  assert.equal(frame.error.code, code, `error code: ${frame.__raw}`);
  assert.equal(typeof frame.error.message, 'string');
  assert.ok(!('result' in frame), 'error response must not also carry result');
  if (id !== undefined) assert.strictEqual(frame.id, id);
  if (category) assert.equal(frame.error.data?.category, category, `data.category: ${frame.__raw}`);
}

async function stillWorks(raw) {
  const r = await raw.call('map/agents/list', {});
  assert.ok(r.result && Array.isArray(r.result.agents), `connection not usable: ${JSON.stringify(r)}`);
}

btest('malformed JSON -> -32700 with id null; the same socket keeps working', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  raw.send('{"jsonrpc":"2.0","id":5,"method":"map/agents/list",');
  const f = await raw.waitFor((x) => 'error' in x || 'result' in x);
  assertError(f, -32700, { id: null, category: 'protocol' });
  assert.match(f.__raw, /"id":null/);
  raw.send('not json at all');
  assertError(await raw.waitFor((x) => 'error' in x), -32700, { id: null });
  raw.send('');
  assertError(await raw.waitFor((x) => 'error' in x), -32700, { id: null });
  await stillWorks(raw);
  raw.close();
});

btest('malformed JSON before map/connect -> -32700, then connect works', B, async () => {
  const raw = await RawWs.open(B.url);
  raw.send('{{{');
  assertError(await raw.waitFor((x) => 'error' in x), -32700, { id: null });
  const c = await raw.connect();
  assert.equal(c.protocolVersion, 1);
  raw.close();
});

btest('JSON array (batch) -> -32600 object response, never an array', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  raw.send('[]');
  let f = await raw.next();
  assert.ok(!Array.isArray(f), 'broker must never send arrays');
  assertError(f, -32600, { id: null, category: 'protocol' });
  raw.send('[{"jsonrpc":"2.0","id":11,"method":"map/agents/list"}]');
  f = await raw.next();
  assert.ok(!Array.isArray(f), 'broker must never send arrays');
  assertError(f, -32600);
  await stillWorks(raw);
  raw.close();
});

btest('valid JSON that is not a request -> -32600 (id echoed when present, else null)', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  raw.send({ jsonrpc: '2.0', id: 21, params: {} }); // missing method
  assertError(await raw.waitFor((x) => x.id === 21), -32600, { id: 21, category: 'protocol' });
  raw.send({ jsonrpc: '2.0', id: 'mm', method: 42 }); // method not a string
  assertError(await raw.waitFor((x) => x.id === 'mm'), -32600, { id: 'mm' });
  raw.send({ jsonrpc: '1.0', id: 22, method: 'map/agents/list' }); // wrong jsonrpc
  assertError(await raw.waitFor((x) => x.id === 22), -32600, { id: 22 });
  raw.send({ id: 23, method: 'map/agents/list' }); // no jsonrpc
  assertError(await raw.waitFor((x) => x.id === 23), -32600, { id: 23 });
  raw.send('42'); // a scalar
  assertError(await raw.waitFor((x) => 'error' in x), -32600, { id: null });
  raw.send('{"jsonrpc":"2.0"}');
  assertError(await raw.waitFor((x) => 'error' in x), -32600, { id: null });
  await stillWorks(raw);
  raw.close();
});

btest('unknown method -> -32601 "Method not found: <method>"', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  const f = await raw.call('map/frobnicate', {});
  assertError(f, -32601, { category: 'protocol' });
  assert.equal(f.error.message, 'Method not found: map/frobnicate');
  const g = await raw.call('x-vendor/thing');
  assertError(g, -32601);
  assert.equal(g.error.message, 'Method not found: x-vendor/thing');
  await stillWorks(raw);
  raw.close();
});

const badParams = [
  ['map/agents/get', {}, 'agentId'],
  ['map/agents/get', { agentId: 5 }, 'agentId'],
  ['map/agents/update', { state: 'busy' }, 'agentId'],
  ['map/scopes/get', {}, 'scopeId'],
  ['map/scopes/members', { scopeId: ['x'] }, 'scopeId'],
  ['map/send', { payload: 1 }, 'to'],
  ['map/send', { to: 42 }, 'to'],
  ['map/unsubscribe', {}, 'subscriptionId'],
  ['map/inject', { content: 'x' }, 'agentId'],
  ['map/agents/stop', {}, 'agentId'],
];

btest('wrong/missing params -> -32602 with data.field naming the field', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  for (const [method, params, field] of badParams) {
    const f = await raw.call(method, params);
    assertError(f, -32602, { category: 'protocol' });
    assert.match(String(f.error.data?.field), new RegExp(`^(params\\.)?${field}$`),
      `${method} ${JSON.stringify(params)}: data.field should name "${field}": ${f.__raw}`);
  }
  // params of the wrong JSON type altogether
  const f = await raw.call('map/agents/get', 'agent-x');
  assertError(f, -32602);
  await stillWorks(raw);
  raw.close();
});

btest('map/connect with bad params -> -32602 (protocolVersion not an integer, participantType missing)', B, async () => {
  const raw = await RawWs.open(B.url);
  let f = await raw.call('map/connect', { protocolVersion: '1', participantType: 'client' });
  assertError(f, -32602);
  assert.match(String(f.error.data?.field), /^(params\.)?protocolVersion$/);
  f = await raw.call('map/connect', { protocolVersion: 1 });
  assertError(f, -32602);
  assert.match(String(f.error.data?.field), /^(params\.)?participantType$/);
  const ok = await raw.connect();
  assert.equal(ok.protocolVersion, 1);
  raw.close();
});

btest('absent params are treated as {} (map/agents/list, map/scopes/list, map/structure/graph)', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  for (const m of ['map/agents/list', 'map/scopes/list', 'map/structure/graph']) {
    const f = await raw.call(m);
    assert.ok(f.result, `${m} without params: ${f.__raw}`);
  }
  raw.close();
});

btest('unknown params fields are ignored', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect({ someFutureField: { x: 1 }, _meta: { v: 1 } });
  const f = await raw.call('map/agents/list', { filter: {}, whatever: true, _meta: { a: 1 } });
  assert.ok(f.result);
  raw.close();
});

btest('request before map/connect -> 1000 with data.category auth; then connect works', B, async () => {
  const raw = await RawWs.open(B.url);
  for (const [m, p] of [['map/agents/list', {}], ['map/send', { to: { broadcast: true } }], ['map/subscribe', {}], ['map/disconnect', undefined]]) {
    const f = await raw.call(m, p);
    assertError(f, 1000, { category: 'auth' });
  }
  const c = await raw.connect();
  assert.equal(c.protocolVersion, 1);
  await stillWorks(raw);
  raw.close();
});

btest('message over --max-message -> close 1009; other connections keep working', B, async (ctx) => {
  const b = await ctx.broker({ args: ['--max-message', '65536'] });
  const victim = await RawWs.open(b.url);
  await victim.connect();
  const bystander = await RawWs.open(b.url);
  await bystander.connect();
  // just under the limit is fine
  const under = { jsonrpc: '2.0', id: 99, method: 'map/agents/list', params: { pad: 'u'.repeat(60000) } };
  victim.send(under);
  assert.ok((await victim.waitFor((x) => x.id === 99)).result);
  const big = { jsonrpc: '2.0', id: 100, method: 'map/agents/list', params: { pad: 'x'.repeat(100000) } };
  victim.send(big);
  const ci = await withTimeout(victim.closed, T, 'oversize close');
  assert.equal(ci.code, 1009);
  assert.equal(victim.frames.filter((x) => x.id === 100 && x.result).length, 0);
  await stillWorks(bystander);
  const fresh = await RawWs.open(b.url);
  await fresh.connect();
  await stillWorks(fresh);
  bystander.close(); fresh.close();
});

btest('oversize message split in fragments also closes with 1009', B, async (ctx) => {
  const b = await ctx.broker({ args: ['--max-message', '65536'] });
  const raw = await RawWs.open(b.url);
  await raw.connect();
  const text = JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'map/agents/list', params: { pad: 'y'.repeat(200000) } });
  const chunk = 20000;
  for (let i = 0; i < text.length; i += chunk) {
    if (raw.closeInfo) break;
    raw.ws.send(text.slice(i, i + chunk), { fin: i + chunk >= text.length });
  }
  const ci = await withTimeout(raw.closed, T, 'oversize fragmented close');
  assert.equal(ci.code, 1009);
});

btest('JSON nested 10000 deep -> error response; connection stays usable', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  const deep = '['.repeat(10000) + ']'.repeat(10000);
  raw.send(`{"jsonrpc":"2.0","id":77,"method":"map/agents/list","params":{"x":${deep}}}`);
  const f = await raw.waitFor((x) => 'error' in x || x.id === 77);
  assert.ok(f.error, `deeply nested input must be rejected: ${String(f.__raw).slice(0, 200)}`);
  assert.ok([-32700, -32600, -32602].includes(f.error.code), `code ${f.error.code}`);
  const objDeep = '{"a":'.repeat(5000) + '1' + '}'.repeat(5000);
  raw.send(objDeep);
  const g = await raw.waitFor((x) => 'error' in x);
  assert.ok([-32700, -32600].includes(g.error.code), `code ${g.error.code}`);
  await stillWorks(raw);
  raw.close();
});

btest('moderately nested payload (depth 30) is accepted and delivered intact', B, async () => {
  const agentId = uid('nest');
  const a = await connectAgent(B.url, { agentId });
  const box = inbox(a);
  let payload = { leaf: true };
  for (let i = 0; i < 30; i++) payload = { n: i, c: [payload] };
  const raw = await RawWs.open(B.url);
  await raw.connect();
  const r = await raw.rpc('map/send', { to: { agent: agentId }, payload });
  assert.deepEqual(r.delivered, [agentId]);
  const m = await box.waitFor((x) => x.id === r.messageId);
  assert.deepEqual(m.payload, payload);
  raw.close();
  await a.disconnect();
});

btest('fragmented message (several WebSocket fragments, split inside UTF-8 chars) is reassembled', B, async () => {
  const agentId = uid('frag');
  const a = await connectAgent(B.url, { agentId });
  const box = inbox(a);
  const raw = await RawWs.open(B.url);
  await raw.connect();
  const payload = { text: 'héllo wörld ✓ 🚀 '.repeat(6000), n: 12345678901 };
  const buf = Buffer.from(JSON.stringify({ jsonrpc: '2.0', id: 'frag-1', method: 'map/send', params: { to: { agent: agentId }, payload } }), 'utf8');
  assert.ok(buf.length > 100000);
  // split at awkward byte offsets (mid multi-byte sequences)
  const cuts = [1, 7, 4099, 33333, 65537, 90001, buf.length];
  let prev = 0;
  for (let i = 0; i < cuts.length; i++) {
    const part = buf.subarray(prev, cuts[i]);
    raw.ws.send(part, { fin: i === cuts.length - 1, binary: false });
    prev = cuts[i];
    await sleep(5);
  }
  const f = await raw.waitFor((x) => x.id === 'frag-1');
  assert.ok(f.result, `fragmented request failed: ${String(f.__raw).slice(0, 300)}`);
  assert.deepEqual(f.result.delivered, [agentId]);
  const m = await box.waitFor((x) => x.id === f.result.messageId);
  assert.deepEqual(m.payload, payload);
  await stillWorks(raw);
  raw.close();
  await a.disconnect();
});

btest('error objects carry data.category per §14 (routing, agent)', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  let f = await raw.call('map/agents/get', { agentId: 'no-such-agent-xyz' });
  assertError(f, 2001, { category: 'routing' });
  f = await raw.call('map/scopes/get', { scopeId: 'no-such-scope-xyz' });
  assertError(f, 2002, { category: 'routing' });
  raw.close();
});

btest('pings while a large frame and a burst are being written: pongs never land inside a frame', B, async () => {
  const agentId = uid('pingrx');
  const rx = await RawWs.open(B.url);
  await rx.connect({ participantType: 'agent' });
  await rx.rpc('map/agents/register', { agentId });
  const pongs = [];
  rx.ws.on('pong', (d) => { pongs.push(d.toString()); });
  const tx = await RawWs.open(B.url);
  await tx.connect();
  const big = 'p'.repeat(900000);
  const sends = [];
  for (let i = 0; i < 40; i++) {
    sends.push(tx.rpc('map/send', { to: { agent: agentId }, payload: { i, big: i % 10 === 0 ? big : undefined } }));
    rx.ws.ping(Buffer.from(`p${i}`));
  }
  await Promise.all(sends);
  for (let i = 0; i < 20; i++) { rx.ws.ping(); await sleep(1); }
  await rx.waitFor((f) => f.method === 'map/message' && f.params.message.payload.i === 39);
  const got = rx.frames.filter((f) => f.method === 'map/message').map((f) => f.params.message.payload);
  assert.deepEqual(got.map((p) => p.i), [...Array(40).keys()]);
  for (const p of got) if (p.i % 10 === 0) assert.equal(p.big, big);
  // pings in a row may be answered by one pong (RFC 6455 5.5.3; lws ignores a ping while its pong
  // is pending), so keep pinging until a pong to one of the final pings arrives
  for (let i = 0; i < 100 && !pongs.some((p) => p.startsWith('final')); i++) {
    rx.ws.ping(Buffer.from(`final${i}`));
    await sleep(50);
  }
  assert.ok(pongs.some((p) => p.startsWith('final')), `pongs: ${pongs.join(',')}`);
  await stillWorks(rx);
  rx.close(); tx.close();
});

btest('the broker only sends text frames', B, async () => {
  const raw = await RawWs.open(B.url);
  await raw.connect();
  await raw.call('map/agents/list', {});
  await raw.call('map/nope', {});
  assert.equal(raw.frames.filter((x) => x.binary).length, 0);
  raw.close();
});
