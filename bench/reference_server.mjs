// reference_server.mjs - the SDK's reference MAPServer (mail enabled) behind a `ws` WebSocket
// server, so bench/run.sh can load it with the same loadgen as mapbroker.
//
//   node bench/reference_server.mjs [--port N] [--host 127.0.0.1]
//
// Wiring (from @multi-agent-protocol/sdk@0.1.15 dist/server.js + dist/index.js):
//   MAPServer#accept(stream, {role, transportType}) returns a RouterConnection; start() runs it.
//   websocketStream(ws) (exported by the main entry) turns a WebSocket with addEventListener()
//   into the {readable, writable} Stream the router reads JSON-RPC objects from / writes to.
//   websocketStream checks `WebSocket.OPEN` against the *global* WebSocket, which Node 20 only
//   has with --experimental-websocket, so the `ws` class is installed as the global first.
// Known MAPServer defects that matter for the bench (MAP.md §15): map/send is never delivered
// (no map/message), so routed sends are only compared against the bare echo ceiling.
import { WebSocketServer, WebSocket } from 'ws';
import { websocketStream } from '@multi-agent-protocol/sdk';
import { MAPServer } from '@multi-agent-protocol/sdk/server';

if (typeof globalThis.WebSocket === 'undefined') globalThis.WebSocket = WebSocket;

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const port = Number(opt('--port', '7430'));
const host = opt('--host', '127.0.0.1');

const server = new MAPServer({ name: 'map-reference', version: '0.1.15', mail: { enabled: true } });
const wss = new WebSocketServer({ host, port, maxPayload: 64 * 1024 * 1024, perMessageDeflate: false });

wss.on('connection', (ws) => {
  const router = server.accept(websocketStream(ws), { role: 'agent', transportType: 'websocket' });
  router.start();
});
wss.on('listening', () => {
  console.log(`reference MAPServer listening on ws://${host}:${port}/`);
});
wss.on('error', (e) => {
  console.error('reference server error:', e.message);
  process.exit(1);
});
const stop = () => {
  wss.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
