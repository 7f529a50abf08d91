'use strict';
// Node callee throughput with the three interceptor modes, against the real sidecar:
//   node bench/decisions.js [--calls 4000] [--inflight 16] [--tokens 100] [--rounds 3]
// One process runs the callee and its caller (so the numbers compare modes; they are not a
// capacity figure); the sidecar is a separate process (test/support.js). Reused tokens: each
// of --tokens identities serves calls/tokens calls. Reports calls/s and p50/p99 latency (only
// meaningful on an idle machine), CPU per call of the Node process (callee + caller) and of
// the sidecar (from /proc: robust to other load), and how many tokens the sidecar was asked
// to verify (Verify + VerifyBatch items: the interceptor's misses and bypasses).

const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const { AuthClient, authServerInterceptor } = require('../src');
const { startSidecar } = require('../test/support');

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, v, i, all) => (
  i % 2 === 0 ? [...pairs, [v.replace(/^--/, ''), Number(all[i + 1])]] : pairs), []));
const CALLS = args.calls || 4000;
const INFLIGHT = args.inflight || 16;
const TOKENS = args.tokens || 100;
const ROUNDS = args.rounds || 3;
const bytes = { serialize: (b) => b, deserialize: (b) => b };
const HELLO = { path: '/b.B/Hello', requestStream: false, responseStream: false,
  requestSerialize: bytes.serialize, requestDeserialize: bytes.deserialize,
  responseSerialize: bytes.serialize, responseDeserialize: bytes.deserialize };

// CPU seconds (user + system) a process has used, from /proc (Linux).
function cpuSeconds(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks
}

async function run(sidecar, tokens, options) {
  const client = new AuthClient(sidecar.unix);
  const interceptor = options === null ? null : authServerInterceptor(client, { audience: 'b' }, options);
  const server = new grpc.Server({ interceptors: interceptor ? [interceptor] : [] });
  server.addService({ Hello: HELLO }, { Hello: (call, cb) => cb(null, Buffer.from('ok')) });
  const port = await new Promise((resolve, reject) => server.bindAsync('127.0.0.1:0',
    grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  const channel = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const call = (token) => new Promise((resolve, reject) => {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${token}`);
    channel.makeUnaryRequest('/b.B/Hello', bytes.serialize, bytes.deserialize, Buffer.from('x'),
      md, (e) => (e ? reject(e) : resolve()));
  });
  const stats = () => (interceptor ? interceptor.stats() : { misses: 0, bypassed: 0, hits: 0 });
  if (interceptor && options.cacheDecisions !== false) {
    while (!interceptor.stats().current) await new Promise((r) => setTimeout(r, 20));
  }
  for (let i = 0; i < 50; i += 1) await call(tokens[i % tokens.length]); // warm up
  const before = stats();
  const latencies = [];
  let next = 0;
  const started = performance.now();
  const cpu0 = process.cpuUsage();
  const sidecarCpu0 = cpuSeconds(sidecar.child.pid);
  await Promise.all(Array.from({ length: INFLIGHT }, async () => {
    while (next < CALLS) {
      const token = tokens[next % tokens.length];
      next += 1;
      const t0 = performance.now();
      await call(token);
      latencies.push(performance.now() - t0);
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const sidecarCpu = cpuSeconds(sidecar.child.pid) - sidecarCpu0;
  const after = stats();
  latencies.sort((a, b) => a - b);
  const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
  channel.close();
  if (interceptor) interceptor.close();
  client.close();
  server.forceShutdown();
  return { callsPerS: Math.round(CALLS / seconds), p50Ms: +pct(0.5).toFixed(2),
    p99Ms: +pct(0.99).toFixed(2), sidecarAsked: after.misses + after.bypassed - before.misses - before.bypassed,
    hits: after.hits - before.hits,
    nodeCpuUsPerCall: Math.round((cpu.user + cpu.system) / CALLS),
    sidecarCpuUsPerCall: Math.round((sidecarCpu * 1e6) / CALLS) };
}

async function main() {
  const sidecar = await startSidecar();
  const admin = new AuthClient(sidecar.admin);
  const tokens = [];
  for (let i = 0; i < TOKENS; i += 1) {
    tokens.push((await admin.issue({ subject: `caller-${i}`, audience: ['b'] })).accessToken);
  }
  const modes = {
    'no authentication (the floor)': null,
    'Verify per call (cacheDecisions:false, coalesceMisses:false)': { cacheDecisions: false, coalesceMisses: false },
    'coalesced only (cacheDecisions:false)': { cacheDecisions: false },
    'default (cache + coalesced misses)': {},
  };
  console.log(`calls=${CALLS} inflight=${INFLIGHT} tokens=${TOKENS} rounds=${ROUNDS} (medians)`);
  const results = Object.fromEntries(Object.keys(modes).map((name) => [name, []]));
  for (let round = 0; round < ROUNDS; round += 1) { // modes interleaved: the JIT warms for all
    for (const [name, options] of Object.entries(modes)) {
      results[name].push(await run(sidecar, tokens, options));
    }
  }
  for (const [name, runs] of Object.entries(results)) {
    const median = Object.fromEntries(Object.keys(runs[0]).map((key) => {
      const values = runs.map((r) => r[key]).sort((a, b) => a - b);
      return [key, values[Math.floor(values.length / 2)]];
    }));
    console.log(name, JSON.stringify(median));
  }
  admin.close();
  await sidecar.stop();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
