// A grpc-js-xds peer for the Trellis integration tests.
//
//   node peer.js client   reads one JSON command per line on stdin
//                         ({"target", "calls", "method", "metadata",
//                         "timeout_ms", "creds"}), makes the calls on one
//                         long-lived channel per target and writes one JSON
//                         result per line on stdout ({"by_instance",
//                         "codes", "errors", "peer_identities"}).
//   node peer.js server   serves trellis.echo.v1.Echo as an xDS-enabled
//                         server (XdsServer) on PORT with INSTANCE_ID, with
//                         xDS server credentials when CREDS=xds; writes
//                         {"serving": port} once bound.
//
// GRPC_XDS_BOOTSTRAP names the bootstrap (trellis bootstrap --for node).
'use strict';

const path = require('path');
const readline = require('readline');
const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');
const protoLoader = require('@grpc/proto-loader');

xds.register();

const protoRoot = path.resolve(__dirname, '../../../proto');
const def = protoLoader.loadSync('trellis/echo/v1/echo.proto', {
  includeDirs: [protoRoot], keepCase: true, longs: String, enums: String, defaults: true,
});
const Echo = grpc.loadPackageDefinition(def).trellis.echo.v1.Echo;

const codeNames = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

function channelCreds(kind) {
  if (kind === 'xds') {
    return new xds.XdsChannelCredentials(grpc.credentials.createInsecure());
  }
  return grpc.credentials.createInsecure();
}

const clients = new Map();

function clientFor(target, creds) {
  const key = target + '|' + (creds || 'insecure');
  if (!clients.has(key)) {
    clients.set(key, new Echo(target, channelCreds(creds)));
  }
  return clients.get(key);
}

function callOnce(client, cmd) {
  return new Promise((resolve) => {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(cmd.metadata || {})) md.set(k, v);
    const deadline = new Date(Date.now() + (cmd.timeout_ms || 10000));
    const method = cmd.method === 'Reverse' ? 'Reverse' : 'Echo';
    client[method]({ message: 'peer' }, md, { deadline }, (err, resp) => {
      if (err) resolve({ code: codeNames[err.code] || String(err.code), error: err.details || err.message });
      else resolve({ code: 'OK', instance: resp.instance_id, peer_identity: resp.peer_identity });
    });
  });
}

async function runCommand(cmd) {
  const client = clientFor(cmd.target, cmd.creds);
  const out = { by_instance: {}, codes: {}, errors: [], peer_identities: {} };
  for (let i = 0; i < (cmd.calls || 1); i++) {
    const r = await callOnce(client, cmd);
    out.codes[r.code] = (out.codes[r.code] || 0) + 1;
    if (r.code === 'OK') {
      out.by_instance[r.instance] = (out.by_instance[r.instance] || 0) + 1;
      if (r.peer_identity) out.peer_identities[r.peer_identity] = true;
    } else if (out.errors.length < 5) {
      out.errors.push(r.code + ': ' + r.error);
    }
  }
  return out;
}

function client() {
  const rl = readline.createInterface({ input: process.stdin });
  let queue = Promise.resolve();
  rl.on('line', (line) => {
    if (!line.trim()) return;
    queue = queue.then(async () => {
      let out;
      try {
        out = await runCommand(JSON.parse(line));
      } catch (e) {
        out = { fatal: String(e && e.stack || e) };
      }
      process.stdout.write(JSON.stringify(out) + '\n');
    });
  });
  rl.on('close', () => queue.then(() => process.exit(0)));
}

function server() {
  const port = Number(process.env.PORT);
  const id = process.env.INSTANCE_ID;
  const service = process.env.SERVICE || '';
  const srv = new xds.XdsServer();
  srv.addService(Echo.service, {
    Echo: (call, cb) => cb(null, { message: call.request.message, instance_id: id, service }),
    Reverse: (call, cb) => cb(null, { message: [...call.request.message].reverse().join(''), instance_id: id, service }),
  });
  const creds = process.env.CREDS === 'xds'
    ? new xds.XdsServerCredentials(grpc.ServerCredentials.createInsecure())
    : grpc.ServerCredentials.createInsecure();
  srv.bindAsync('127.0.0.1:' + port, creds, (err, bound) => {
    if (err) {
      process.stdout.write(JSON.stringify({ fatal: String(err) }) + '\n');
      process.exit(1);
    }
    process.stdout.write(JSON.stringify({ serving: bound }) + '\n');
  });
  process.on('SIGTERM', () => srv.tryShutdown(() => process.exit(0)));
}

if (process.argv[2] === 'server') server();
else client();
