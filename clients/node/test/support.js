'use strict';
// Test support: the REAL Python sidecar (and Python services) as child processes.

const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const grpc = require('@grpc/grpc-js');
const { authServerInterceptor, currentClaims, errorReason } = require('../src');
const { STATUS_DETAILS_KEY } = require('../src/status');

const bytes = { serialize: (b) => b, deserialize: (b) => b };
const HELLO = {
  path: '/demo.Greeter/Hello', requestStream: false, responseStream: false,
  requestSerialize: bytes.serialize, requestDeserialize: bytes.deserialize,
  responseSerialize: bytes.serialize, responseDeserialize: bytes.deserialize,
};

const REPO = path.resolve(__dirname, '../../..');

// The suite runs the real sidecar, so it needs a Python with this repository installed:
// $AUTHSIDECAR_PYTHON, else the repository's .venv (made by `./dev up` or `./dev test`), else
// python3 if it can import the sidecar. Without one every test fails with this message.
function findPython() {
  const candidates = [process.env.AUTHSIDECAR_PYTHON, path.join(REPO, '.venv/bin/python'), 'python3'];
  for (const candidate of candidates.filter(Boolean)) {
    const probe = spawnSync(candidate, ['-c', 'import sidecar, authsidecar.client'], { cwd: REPO });
    if (probe.status === 0) return candidate;
  }
  throw new Error('the Node suite starts the real Python sidecar and found no Python that can '
    + 'import it. Run `./dev test` once at the repository root (it creates .venv), or set '
    + "AUTHSIDECAR_PYTHON to a Python where `pip install -e '.[dev]'` was run. Tried: "
    + candidates.filter(Boolean).join(', '));
}

let python = null;
function pythonPath() {
  python = python || findPython();
  return python;
}

// Resolves with the first stdout line matching `pattern`; rejects if the process exits first.
function waitForLine(child, pattern, what, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    let stderr = '';
    child.stderr.on('data', (chunk) => { stderr += chunk; });
    const timer = setTimeout(() => reject(new Error(`${what}: no banner in time\n${stderr}`)), timeoutMs);
    lines.on('line', (line) => {
      const found = line.match(pattern);
      if (found) {
        clearTimeout(timer);
        resolve(found);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited with ${code}\n${stderr}`));
    });
  });
}

async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

/** `python -m sidecar serve` on a fresh data dir, memory store, TCP port 0. */
async function startSidecar(extraEnv = {}) {
  const dataDir = fs.mkdtempSync('/tmp/asn-');
  const child = spawn(pythonPath(), ['-m', 'sidecar', 'serve'], {
    cwd: REPO,
    env: {
      ...process.env,
      AUTHSIDECAR_DATA_DIR: dataDir,
      AUTHSIDECAR_LISTEN__TCP: '127.0.0.1:0',
      AUTHSIDECAR_STORE__BACKEND: 'memory',
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const [, unix, tcp, admin, metrics] = await waitForLine(child,
    /^authsidecar serving .*unix=(\S+) tcp=(\S+) admin=(\S+)(?:.* metrics=(\S+))?/, 'sidecar');
  return {
    unix: `unix:${unix}`,
    tcp,
    admin: `unix:${admin}`,
    metrics: metrics || null, // host:port of /metrics when AUTHSIDECAR_METRICS__LISTEN is set
    dataDir,
    child,
    async stop() {
      await stop(child);
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** The Python example callee (AsyncAuthServerInterceptor) on a free port. */
async function startPythonCallee(sidecarAddress) {
  const child = spawn(pythonPath(), [path.join(REPO, 'examples/two_services/callee.py'),
    '--listen', '127.0.0.1:0', '--sidecar', sidecarAddress], {
    cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const [, address] = await waitForLine(child, /^callee listening on (\S+)/, 'python callee');
  return { address, stop: () => stop(child) };
}

/** Run a Python script to completion; resolves with {code, stdout, stderr}. */
function runPython(args) {
  return new Promise((resolve) => {
    const child = spawn(pythonPath(), args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => { stdout += c; });
    child.stderr.on('data', (c) => { stderr += c; });
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** A grpc-js "Greeter" callee behind authServerInterceptor(client, ...) on a free loopback
 * port, the claims its handler saw, and a caller that sets the bearer header itself (no
 * bearerInterceptor: its one resend on UNAUTHENTICATED would be a second Verify and blur
 * the counts). `call(token)` resolves {code, reason}; `answer(token)` also the message and
 * the status details as sent (base64). */
async function startCallee(client, interceptorOptions) {
  const interceptor = authServerInterceptor(client, { audience: 'greeter', defaultScopes: ['greet'] },
    interceptorOptions);
  const seen = [];
  const server = new grpc.Server({ interceptors: [interceptor] });
  server.addService({ Hello: HELLO }, {
    Hello(call, callback) {
      seen.push(currentClaims(call));
      callback(null, Buffer.from('ok'));
    },
  });
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(),
      (error, bound) => (error ? reject(error) : resolve(bound)));
  });
  const channel = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const send = (token, describe) => {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${token}`);
    return new Promise((resolve) => {
      channel.makeUnaryRequest('/demo.Greeter/Hello', bytes.serialize, bytes.deserialize,
        Buffer.from('x'), metadata, { deadline: Date.now() + 10000 },
        (error) => resolve(error ? describe(error) : { code: 0 }));
    });
  };
  return {
    interceptor,
    seen,
    call: (token) => send(token, (error) => ({ code: error.code, reason: errorReason(error.metadata) })),
    answer: (token) => send(token, (error) => ({
      code: error.code,
      details: error.details,
      statusDetails: error.metadata.get(STATUS_DETAILS_KEY).map((v) => Buffer.from(v).toString('base64')),
    })),
    close() {
      channel.close();
      interceptor.close();
      server.forceShutdown();
    },
  };
}

/** Poll `predicate` (sync or async) every 10 ms until it holds; throw after `timeoutMs`. */
async function waitFor(predicate, what, timeoutMs = 15000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

module.exports = {
  REPO, pythonPath, runPython, startCallee, startPythonCallee, startSidecar, waitFor,
};
