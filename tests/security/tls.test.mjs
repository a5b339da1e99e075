// TLS and mutual TLS through the real binary (--tls-cert/--tls-key/--tls-ca).
// Certificates are generated here with openssl into a private temp dir that
// is deleted at exit; no key material is committed.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { before, after } from 'node:test';
import {
  startBroker, brokerBinary, btest, closeAll, sleep, T, withTimeout, uid,
  WebSocket, ClientConnection, AgentConnection, RawWs,
  tempDir, openssl, writeFile, stillWorks, rawOpen,
} from './lib.mjs';

let dir;
const F = {};

function mkCa(name) {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', `/CN=${name}`, '-keyout', `${dir}/${name}.key`, '-out', `${dir}/${name}.crt`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
}
function mkLeaf(name, ca, ext) {
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${name}`,
    '-keyout', `${dir}/${name}.key`, '-out', `${dir}/${name}.csr`]);
  writeFile(dir, `${name}.ext`, ext);
  openssl(['x509', '-req', '-in', `${dir}/${name}.csr`, '-CA', `${dir}/${ca}.crt`, '-CAkey', `${dir}/${ca}.key`,
    '-CAcreateserial', '-days', '2', '-out', `${dir}/${name}.crt`, '-extfile', `${dir}/${name}.ext`]);
}

before(() => {
  dir = tempDir('mbsec-tls-');
  mkCa('ca');
  mkCa('otherca');
  mkLeaf('server', 'ca', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  mkLeaf('client', 'ca', 'extendedKeyUsage=clientAuth\n');
  mkLeaf('rogue', 'otherca', 'extendedKeyUsage=clientAuth\n');
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=selfsigned', '-keyout', `${dir}/self.key`, '-out', `${dir}/self.crt`]);
  for (const n of ['ca', 'server', 'client', 'rogue', 'self']) {
    F[n] = { cert: fs.readFileSync(`${dir}/${n}.crt`), key: fs.existsSync(`${dir}/${n}.key`) ? fs.readFileSync(`${dir}/${n}.key`) : null };
  }
});
after(async () => { await closeAll(); });

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

async function tlsBroker(ctx, { mtls = false, extra = [] } = {}) {
  const tport = await freePort();
  const args = ['--tls-cert', `${dir}/server.crt`, '--tls-key', `${dir}/server.key`, '--tls-port', String(tport), ...extra];
  if (mtls) args.push('--tls-ca', `${dir}/ca.crt`);
  const b = await ctx.broker({ args });
  // the TLS vhost is created right after the plain one; wait until it accepts
  const deadline = Date.now() + 5000;
  for (;;) {
    const ok = await new Promise((r) => { const s = net.connect(tport, '127.0.0.1', () => { s.destroy(); r(true); }); s.on('error', () => r(false)); });
    if (ok || Date.now() > deadline) break;
    await sleep(25);
  }
  b.wss = `wss://localhost:${tport}/`;
  b.tport = tport;
  return b;
}

/** Run fn with globalThis.WebSocket replaced by a ws subclass carrying TLS options (what the SDK constructs). */
async function withWsOptions(opts, fn) {
  const prev = globalThis.WebSocket;
  globalThis.WebSocket = class extends WebSocket {
    constructor(u, protocols) { super(u, protocols, opts); this.on('error', () => {}); }
  };
  try { return await fn(); } finally { globalThis.WebSocket = prev; }
}

/** Raw TLS handshake attempt; resolves 'ok' or the error message. */
function handshake(port, opts) {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: F.ca.cert, ...opts });
    let settled = false;
    const done = (v) => { if (!settled) { settled = true; s.destroy(); resolve(v); } };
    s.once('secureConnect', () => {
      // TLS 1.3 reports client-certificate failures after the handshake: write and see whether the server hangs up.
      s.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
      s.once('data', () => done('ok'));
      s.once('close', () => done('closed after handshake'));
    });
    s.once('error', (e) => done(`error: ${e.code || e.message}`));
    setTimeout(() => done('timeout'), 4000).unref();
  });
}

btest('T1 wss: the SDK ClientConnection and AgentConnection work over TLS (CA passed via a ws subclass)', null, async (ctx) => {
  const b = await tlsBroker(ctx);
  await withWsOptions({ ca: F.ca.cert }, async () => {
    const client = await withTimeout(ClientConnection.connect(b.wss, { name: 'tls-client' }), T, 'ClientConnection.connect');
    const agent = await withTimeout(AgentConnection.connect(b.wss, { name: 'tls-agent' }), T, 'AgentConnection.connect');
    const { agentId } = agent;
    assert.equal(typeof agentId, 'string');
    const got = new Promise((r) => agent.onMessage((m) => r(m)));
    await client.send({ agent: agentId }, { hello: 'tls' });
    const m = await withTimeout(got, T, 'message over TLS');
    assert.deepEqual(m.payload, { hello: 'tls' });
    const list = await client.listAgents();
    assert.ok(list.agents.some((a) => a.id === agentId));
    await agent.disconnect().catch(() => {});
    await client.disconnect().catch(() => {});
  });
});

btest('T2 wss without trusting the CA fails (the broker really serves our certificate)', null, async (ctx) => {
  const b = await tlsBroker(ctx);
  await assert.rejects(rawOpen(b.wss), /self[- ]signed|unable to (get|verify)|certificate/i);
  const r = await rawOpen(b.wss, { ca: F.ca.cert });
  await r.connect();
  await stillWorks(r);
  r.close();
});

btest('T3 mTLS (--tls-ca): a client certificate from the CA is accepted; none, self-signed or foreign-CA ones are rejected', null, async (ctx) => {
  const b = await tlsBroker(ctx, { mtls: true });
  const good = await rawOpen(b.wss, { ca: F.ca.cert, cert: F.client.cert, key: F.client.key });
  await good.connect();
  await stillWorks(good);
  for (const [name, opts] of [['no certificate', {}], ['self-signed', { cert: F.self.cert, key: F.self.key }],
    ['foreign CA', { cert: F.rogue.cert, key: F.rogue.key }]]) {
    await assert.rejects(rawOpen(b.wss, { ca: F.ca.cert, ...opts }), undefined, `${name} must be rejected`);
    const h = await handshake(b.tport, opts);
    assert.notEqual(h, 'ok', `${name}: TLS session served (${h})`);
  }
  assert.equal(await handshake(b.tport, { cert: F.client.cert, key: F.client.key }), 'ok');
  await stillWorks(good); // unaffected by the rejected peers
  good.close();
});

btest('T4 TLS 1.1 and 1.0 are refused; TLS 1.2 and 1.3 are accepted', null, async (ctx) => {
  const b = await tlsBroker(ctx);
  for (const v of ['TLSv1.1', 'TLSv1']) {
    const h = await handshake(b.tport, { minVersion: v, maxVersion: v, ciphers: 'DEFAULT@SECLEVEL=0' });
    assert.match(h, /^error/, `${v} handshake: ${h}`);
  }
  assert.equal(await handshake(b.tport, { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' }), 'ok');
  assert.equal(await handshake(b.tport, { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' }), 'ok');
});

function runBroker(args) {
  return new Promise((resolve) => {
    const p = spawn(brokerBinary(), ['--store', 'memory:', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    const t = setTimeout(() => p.kill('SIGKILL'), 8000);
    p.on('exit', (code, sig) => { clearTimeout(t); resolve({ code, sig, out }); });
  });
}

btest('T5 missing, unreadable or bogus certificate files: clear start-up error, exit code != 0', null, async () => {
  const port = String(await freePort());
  const garbage = writeFile(dir, 'garbage.pem', 'not a certificate\n');
  const cases = [
    [['--tls-cert', `${dir}/missing.crt`, '--tls-key', `${dir}/server.key`], /--tls-cert .*missing\.crt.*(No such file|cannot read)/],
    [['--tls-cert', `${dir}/server.crt`, '--tls-key', `${dir}/missing.key`], /--tls-key .*missing\.key/],
    [['--tls-cert', `${dir}/server.crt`, '--tls-key', `${dir}/server.key`, '--tls-ca', `${dir}/missing-ca.crt`], /--tls-ca/],
    [['--tls-cert', garbage, '--tls-key', `${dir}/server.key`], /TLS|tls-cert/],
    [['--tls-cert', `${dir}/server.crt`, '--tls-key', `${dir}/client.key`], /TLS|tls-key/], // key does not match
    [['--tls-cert', `${dir}/server.crt`], /go together/],
  ];
  for (const [args, re] of cases) {
    const r = await runBroker(['--port', port, '--tls-port', String(await freePort()), ...args]);
    assert.ok(r.code !== 0 && r.code !== null, `exit ${r.code}/${r.sig} for ${args.join(' ')}:\n${r.out}`);
    assert.match(r.out, re, `message for ${args.join(' ')}`);
  }
});

btest('T6 plain and TLS listeners side by side: one agent on wss, one client on ws, messages cross', null, async (ctx) => {
  const b = await tlsBroker(ctx);
  const plain = await RawWs.open(b.url);
  await plain.connect();
  const secure = await rawOpen(b.wss, { ca: F.ca.cert });
  await secure.connect({ participantType: 'agent' });
  const aid = uid('wss-agent');
  await secure.rpc('map/agents/register', { agentId: aid });
  await plain.rpc('map/send', { to: { agent: aid }, payload: { via: 'plain' } });
  const m = await secure.waitFor((f) => f.method === 'map/message');
  assert.deepEqual(m.params.message.payload, { via: 'plain' });
  // several frames per TLS write (a burst) and one frame across several writes (300 KB), in order, intact
  const big = 'b\u00e9'.repeat(150000);
  const sends = [];
  for (let i = 0; i < 200; i++) sends.push(plain.rpc('map/send', { to: { agent: aid }, payload: { i } }));
  sends.push(plain.rpc('map/send', { to: { agent: aid }, payload: { i: 200, big } }));
  for (let i = 201; i < 260; i++) sends.push(plain.rpc('map/send', { to: { agent: aid }, payload: { i } }));
  await Promise.all(sends);
  await secure.waitFor((f) => f.method === 'map/message' && f.params.message.payload.i === 259);
  const seen = secure.frames.filter((f) => f.method === 'map/message' && typeof f.params.message.payload.i === 'number')
    .map((f) => f.params.message.payload);
  assert.deepEqual(seen.map((p) => p.i), [...Array(260).keys()]);
  assert.equal(seen[200].big, big);
  // a plain ws handshake on the TLS port and a TLS handshake on the plain port both fail
  await assert.rejects(rawOpen(`ws://127.0.0.1:${b.tport}/`));
  await assert.rejects(rawOpen(`wss://localhost:${b.port}/`, { ca: F.ca.cert }));
  await stillWorks(plain);
  await stillWorks(secure);
  plain.close(); secure.close();
});
