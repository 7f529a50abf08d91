'use strict';
// registerDecisionMetrics (src/metrics.js): the interceptor's stats() as Prometheus series
// through a REAL prom-client registry, scraped as text, from a real interceptor serving real
// calls with Verify and Watch at a REAL sidecar; the same names and labels as the Python
// client's authsidecar.client.metrics (tests/client/test_metrics.py).

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { after, afterEach, before, test } = require('node:test');
const promClient = require('prom-client');
const { AuthClient, authServerInterceptor, registerDecisionMetrics } = require('../src');
const { startCallee, startSidecar, waitFor } = require('./support');

const P = 'authsidecar_client_';

let sidecar;
let admin;
let client;
const cleanups = [];

before(async () => {
  sidecar = await startSidecar({ AUTHSIDECAR_WATCH__HEARTBEAT_INTERVAL_MS: '200' });
  admin = new AuthClient(sidecar.admin);
  client = new AuthClient(sidecar.tcp);
});

after(async () => {
  admin.close();
  client.close();
  await sidecar.stop();
});

afterEach(async () => {
  while (cleanups.length) await cleanups.pop()();
});

/** The value of the sample `name{labels}` in a text scrape, or undefined when absent. */
function sample(text, name, labels) {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).sort().join(',');
  for (const line of text.split('\n')) {
    const found = /^([a-z_]+)\{([^}]*)\} (\S+)$/.exec(line);
    if (found && found[1] === name && found[2].split(',').sort().join(',') === wanted) {
      return Number(found[3]);
    }
  }
  return undefined;
}

test('the series count the hits, misses and invalidations of real calls', async () => {
  const callee = await startCallee(client, { stalenessMs: 5000 });
  cleanups.push(async () => callee.close());
  const stats = () => callee.interceptor.stats();
  await waitFor(() => stats().current, 'the watch to be current');
  const registry = new promClient.Registry();
  registerDecisionMetrics({ orders: callee.interceptor }, { registry });

  const grant = await admin.issue({ subject: 'caller', audience: ['greeter'], scope: 'greet' });
  for (let i = 0; i < 3; i += 1) assert.equal((await callee.call(grant.accessToken)).code, 0);
  await client.revoke(grant.accessToken);
  await waitFor(() => stats().invalidations.tokenRevoked === 1, 'the TokenRevoked event');
  assert.equal((await callee.call(grant.accessToken)).code, 16); // refused locally
  assert.equal((await callee.call(grant.accessToken)).code, 16);

  const text = await registry.metrics();
  const s = stats();
  const value = (name, labels = {}) => sample(text, P + name, { interceptor: 'orders', ...labels });
  assert.equal(value('decision_lookups_total', { result: 'hit' }), s.hits);
  assert.equal(s.hits, 2);
  assert.equal(value('decision_lookups_total', { result: 'miss' }), s.misses);
  assert.equal(s.misses, 1);
  assert.equal(value('decision_lookups_total', { result: 'bypassed' }), s.bypassed);
  assert.equal(value('decision_lookups_total', { result: 'refused' }), s.refusedLocally);
  assert.equal(s.refusedLocally, 2);
  assert.equal(value('decision_invalidations_total', { kind: 'token_revoked' }), 1);
  assert.equal(value('decision_invalidations_total', { kind: 'gap' }), 0);
  for (const kind of ['family_revoked', 'key_retired', 'decisions_reset', 'resync']) {
    assert.equal(value('decision_invalidations_total', { kind }), s.invalidations[
      kind.replace(/_(.)/g, (_, c) => c.toUpperCase())], kind);
  }
  assert.equal(value('decision_entries'), 1); // the refusal kept until exp
  assert.equal(value('decision_tombstones'), 1);
  assert.ok(value('decision_bytes') > 0);
  assert.equal(value('decision_bytes'), s.bytes);
  assert.equal(value('decision_evictions_total'), 0);
  assert.equal(value('decisions_stored_total'), s.stored);
  assert.equal(s.stored, 1);
  assert.equal(value('decisions_not_stored_total'), 0);
  assert.equal(value('decision_expirations_total'), 0);
  assert.equal(value('decisions_invalidated_total'), s.dropped);
  assert.equal(s.dropped, 1); // the decision the TokenRevoked event turned into a refusal
  assert.equal(value('watch_current'), 1);
  assert.equal(value('watch_subscriptions_total'), 1);
  const staleness = value('watch_staleness_seconds');
  assert.ok(staleness >= 0 && staleness < 5, `staleness ${staleness}`); // the configured bound
  assert.match(text, /# TYPE authsidecar_client_decision_lookups_total counter/);
  assert.match(text, /# TYPE authsidecar_client_decision_entries gauge/);
  for (const name of ['decisions_stored_total', 'decisions_not_stored_total',
    'decision_expirations_total', 'decisions_invalidated_total']) {
    assert.match(text, new RegExp(`# TYPE ${P}${name} counter`));
  }

  // Read at scrape time: a later call shows in the next scrape, with no work in the call.
  const again = await admin.issue({ subject: 'caller', audience: ['greeter'], scope: 'greet' });
  assert.equal((await callee.call(again.accessToken)).code, 0);
  const later = await registry.metrics();
  assert.equal(sample(later, `${P}decision_lookups_total`, { interceptor: 'orders', result: 'miss' }), 2);
  assert.equal(sample(later, `${P}decisions_stored_total`, { interceptor: 'orders' }), 2);
});

test('the stored, not stored and expiration series follow what the cache kept and dropped', async () => {
  let offsetMs = 0; // the callee's clock for exp/nbf; the real sidecar keeps its own
  const callee = await startCallee(client, { stalenessMs: 5000, now: () => Date.now() + offsetMs });
  cleanups.push(async () => callee.close());
  await waitFor(() => callee.interceptor.stats().current, 'the watch to be current');
  const registry = new promClient.Registry();
  registerDecisionMetrics({ orders: callee.interceptor }, { registry });
  const scrape = async () => {
    const text = await registry.metrics();
    return Object.fromEntries(['decisions_stored_total', 'decisions_not_stored_total',
      'decision_expirations_total', 'decisions_invalidated_total', 'decision_entries']
      .map((name) => [name, sample(text, P + name, { interceptor: 'orders' })]));
  };
  const grant = await admin.issue({ subject: 'caller', audience: ['greeter'], scope: 'greet' });
  const claims = await client.verify(grant.accessToken, { audience: 'greeter' });
  assert.equal((await callee.call(grant.accessToken)).code, 0);
  assert.deepEqual(await scrape(), { decisions_stored_total: 1, decisions_not_stored_total: 0,
    decision_expirations_total: 0, decisions_invalidated_total: 0, decision_entries: 1 });
  offsetMs = claims.exp * 1000 - Date.now(); // the callee's clock reaches exp
  // The lookup drops the expired entry; the sidecar (its clock) says yes; not kept at exp.
  assert.equal((await callee.call(grant.accessToken)).code, 0);
  assert.deepEqual(await scrape(), { decisions_stored_total: 1, decisions_not_stored_total: 1,
    decision_expirations_total: 1, decisions_invalidated_total: 0, decision_entries: 0 });
  assert.equal((await callee.call(grant.accessToken)).code, 0); // nothing left to expire
  assert.deepEqual(await scrape(), { decisions_stored_total: 1, decisions_not_stored_total: 2,
    decision_expirations_total: 1, decisions_invalidated_total: 0, decision_entries: 0 });
  const s = callee.interceptor.stats();
  assert.deepEqual([s.stored, s.notStored, s.expirations, s.dropped], [1, 2, 1, 0]);
});

test('interceptors of one process are told apart and unknowns are absent', async () => {
  const first = authServerInterceptor(client, {}, { cacheDecisions: false });
  const second = authServerInterceptor(client, {}, { cacheDecisions: false, coalesceMisses: false });
  cleanups.push(async () => {
    first.close();
    second.close();
  });
  const registry = new promClient.Registry();
  // The module passed in, as a service bundling its own prom-client would.
  const exported = registerDecisionMetrics(new Map([['a', first], ['b', second]]),
    { registry, promClient });
  const text = await registry.metrics();
  for (const interceptor of ['a', 'b']) {
    assert.equal(sample(text, `${P}decision_lookups_total`, { interceptor, result: 'hit' }), 0);
    assert.equal(sample(text, `${P}watch_current`, { interceptor }), 0);
    assert.equal(sample(text, `${P}watch_staleness_seconds`, { interceptor }), undefined);
  }
  // A registry that has the series already is refused, and keeps exactly what it had.
  const before = registry.getMetricsAsArray().length;
  assert.throws(() => registerDecisionMetrics(first, { registry }), /already registered/);
  assert.equal(registry.getMetricsAsArray().length, before);
  exported.unregister();
  assert.equal(registry.getMetricsAsArray().length, 0);
  // A lone interceptor is named "default"; registering again after unregister() works.
  registerDecisionMetrics(first, { registry });
  const alone = await registry.metrics();
  assert.equal(sample(alone, `${P}decision_lookups_total`, { interceptor: 'default', result: 'miss' }), 0);
  assert.throws(() => registerDecisionMetrics({ x: {} }, { registry: new promClient.Registry() }),
    /interceptor "x" has no stats\(\)/);
});

test('requiring the package loads no prom-client, and without it the export says what to install', () => {
  const probe = `
    const Module = require('node:module');
    const resolve = Module._resolveFilename;
    Module._resolveFilename = function (request, ...rest) {
      if (request === 'prom-client') {
        const error = new Error("Cannot find module 'prom-client'");
        error.code = 'MODULE_NOT_FOUND';
        throw error;
      }
      return resolve.call(this, request, ...rest);
    };
    const pkg = require(${JSON.stringify(path.join(__dirname, '..', 'src'))});
    const loaded = Object.keys(require.cache).some((f) => f.includes('prom-client'));
    let message = '';
    try { pkg.registerDecisionMetrics({}); } catch (error) { message = error.message; }
    console.log(JSON.stringify({ loaded, message }));`;
  const run = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const { loaded, message } = JSON.parse(run.stdout);
  assert.equal(loaded, false);
  assert.match(message, /needs prom-client .*npm install prom-client/);
});
