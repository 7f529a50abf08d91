'use strict';
// Prometheus export of authServerInterceptor's stats() through prom-client, an OPTIONAL peer
// dependency: nothing here loads it until registerDecisionMetrics is called (and then only
// when the caller did not pass its own prom-client module), so the package works without it.
//
// The same series, names and labels as the Python client's authsidecar.client.metrics, each
// read from stats() at scrape time (a collect() callback per metric), so the interceptor's
// calls do no extra work for them. One label `interceptor` names each interceptor:
//
//   authsidecar_client_decision_lookups_total{result=hit|miss|bypassed|refused}
//   authsidecar_client_decisions_stored_total / _not_stored_total   (stored, notStored)
//   authsidecar_client_decision_evictions_total / _expirations_total (evictions, expirations)
//   authsidecar_client_decision_entries, authsidecar_client_decision_bytes
//   authsidecar_client_decision_tombstones
//   authsidecar_client_decision_invalidations_total{kind=token_revoked|...|gap}
//   authsidecar_client_decisions_invalidated_total  (dropped: decisions the events voided)
//   authsidecar_client_watch_current
//   authsidecar_client_watch_staleness_seconds      (absent before the first message)
//   authsidecar_client_watch_subscriptions_total
//
// With the cache off, every series but the lookups stays at 0 (as in Python).

const PREFIX = 'authsidecar_client_';

// stats().invalidations keys -> the `kind` label values Python uses.
const KINDS = {
  tokenRevoked: 'token_revoked',
  familyRevoked: 'family_revoked',
  keyRetired: 'key_retired',
  decisionsReset: 'decisions_reset',
  resync: 'resync',
  gap: 'gap',
};

const LOOKUPS = 'Protected calls by cache result: hit (no sidecar round trip), miss (asked '
  + 'Verify while current), bypassed (stream not current: asked Verify unconditionally), '
  + 'refused (a revocation event voided the cached decision: refused without the sidecar)';

// [name, type, help, value(stats) -> number | null (no sample), extra label, its values]
const SERIES = [
  ['decision_lookups_total', 'counter', LOOKUPS, null, 'result', {
    hit: (s) => s.hits, miss: (s) => s.misses, bypassed: (s) => s.bypassed,
    refused: (s) => s.refusedLocally,
  }],
  ['decisions_stored_total', 'counter', 'Verify answers kept in the cache',
    (s) => s.stored ?? 0],
  ['decisions_not_stored_total', 'counter',
    'Verify answers not kept (not current, voided in flight, outside nbf..exp)',
    (s) => s.notStored ?? 0],
  ['decision_evictions_total', 'counter', 'Entries dropped to stay within the bounds',
    (s) => s.evictions ?? 0],
  ['decision_expirations_total', 'counter', "Entries dropped because the token's exp passed",
    (s) => s.expirations ?? 0],
  ['decision_entries', 'gauge', 'Decisions held now', (s) => s.entries ?? 0],
  ['decision_bytes', 'gauge', 'Estimated bytes the decisions hold now', (s) => s.bytes ?? 0],
  ['decision_tombstones', 'gauge',
    'Decisions held now as refusals (revoked since cached; counted in entries)',
    (s) => s.tombstones ?? 0],
  ['decision_invalidations_total', 'counter', 'Watch events applied, by kind', null, 'kind',
    Object.fromEntries(Object.entries(KINDS).map(
      ([key, label]) => [label, (s) => s.invalidations?.[key] ?? 0]))],
  ['decisions_invalidated_total', 'counter', 'Entries the watch events dropped',
    (s) => s.dropped ?? 0],
  ['watch_current', 'gauge', '1 while the watch stream is current (hits are served)',
    (s) => (s.current ? 1 : 0)],
  ['watch_staleness_seconds', 'gauge', 'Seconds since the last message on the watch stream',
    (s) => (typeof s.stalenessMs === 'number' ? s.stalenessMs / 1000 : null)],
  ['watch_subscriptions_total', 'counter', 'Watch streams opened, the first included',
    (s) => s.subscriptions ?? 0],
];

function loadPromClient() {
  try {
    return require('prom-client'); // eslint-disable-line global-require
  } catch (error) {
    if (error && error.code === 'MODULE_NOT_FOUND') {
      throw new Error('registerDecisionMetrics needs prom-client (an optional peer '
        + 'dependency): npm install prom-client, or pass {promClient}');
    }
    throw error;
  }
}

/** {name: interceptor} from a lone interceptor ("default"), a Map, or a plain object. */
function named(interceptors) {
  if (interceptors && typeof interceptors.stats === 'function') return [['default', interceptors]];
  const entries = interceptors instanceof Map
    ? [...interceptors.entries()] : Object.entries(interceptors || {});
  for (const [name, interceptor] of entries) {
    if (!interceptor || typeof interceptor.stats !== 'function') {
      throw new TypeError(`interceptor "${name}" has no stats()`);
    }
  }
  return entries;
}

/**
 * Export stats() of each interceptor (by name; a lone one is named "default") to `registry`
 * (default: prom-client's global registry), once per registry: a registry that already has
 * these series is refused, and nothing is registered then.
 * options: {registry, promClient} (promClient: the prom-client module to use, instead of
 * require('prom-client')). Returns {metrics, unregister()}.
 */
function registerDecisionMetrics(interceptors, options = {}) {
  const sources = named(interceptors);
  const prom = options.promClient || loadPromClient();
  const registry = options.registry || prom.register;
  const taken = SERIES.map(([name]) => PREFIX + name).filter((n) => registry.getSingleMetric(n));
  if (taken.length > 0) {
    throw new Error(`already registered in this registry: ${taken.join(', ')}`);
  }
  const metrics = SERIES.map(([name, type, help, value, label, values]) => {
    const Metric = type === 'counter' ? prom.Counter : prom.Gauge;
    return new Metric({
      name: PREFIX + name,
      help,
      labelNames: label ? ['interceptor', label] : ['interceptor'],
      registers: [registry],
      collect() {
        this.reset(); // absolute values read now, not increments
        for (const [interceptor, source] of sources) {
          const stats = source.stats();
          const samples = label
            ? Object.entries(values).map(([v, read]) => [{ interceptor, [label]: v }, read(stats)])
            : [[{ interceptor }, value(stats)]];
          for (const [labels, sample] of samples) {
            if (sample === null) continue;
            if (type === 'counter') this.inc(labels, Number(sample));
            else this.set(labels, Number(sample));
          }
        }
      },
    });
  });
  return {
    metrics,
    unregister() {
      for (const [name] of SERIES) registry.removeSingleMetric(PREFIX + name);
    },
  };
}

module.exports = { registerDecisionMetrics };
