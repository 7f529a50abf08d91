'use strict';
// The server interceptor: every protected call is checked before any handler runs.
//
// `authServerInterceptor(client, policy, options)` (grpc-js >= 1.10 server interceptors)
// reads the bearer token and either passes the call on with the sidecar's claims in the
// `authsidecar-claims-bin` metadata entry (read them with `currentClaims(call)`; any such
// entry a caller sent is removed first) or ends it with UNAUTHENTICATED / PERMISSION_DENIED
// and ErrorInfo{reason, domain: authsidecar.v1}. Streams are checked once, at the start.
//
// Decisions (issue 15), both on by default:
//   cacheDecisions  keep the sidecar's positive decisions (DecisionCache) while the Watch
//                   stream says they still hold (DecisionWatch); a hit skips the Verify hop.
//   coalesceMisses  misses waiting at the same moment go as one VerifyBatch (VerifyBatcher).
// A decision voided by TokenRevoked / FamilyRevoked is refused here until the token's `exp`
// (DecisionCache keeps a refusal in its place), with exactly the status a sidecar refusal
// of it gets (UNAUTHENTICATED, TOKEN_REVOKED): no Verify storm after a revocation.
// Concurrent misses for the same token and requirements share one Verify, unless an event
// was applied, or the watch lapsed, since that Verify was sent. An answer is kept only when
// asked and answered while the watch is current with no lapse between (as in Python).
// `stored` / `notStored` count, per call, the Verify answers that said yes and were kept or
// not kept (not current when asked or answered, voided in flight, outside nbf..exp, too big):
// a call that shared another's Verify counts that Verify's outcome, as each call of the
// Python interceptor offers its own answer to the cache. Refusals are neither.

const grpc = require('@grpc/grpc-js');
const { VerifyBatcher } = require('./batcher');
const { AuthClientError } = require('./client');
const { DecisionCache, decisionKey } = require('./decisions');
const { codeForReason } = require('./reasons');
const { STATUS_DETAILS_KEY, encodeStatusDetails } = require('./status');
const { DecisionWatch } = require('./watch');

const AUTHORIZATION = 'authorization';
const CLAIMS_KEY = 'authsidecar-claims-bin';
const DEFAULT_EXEMPT = ['/grpc.health.v1.Health/*', '/grpc.reflection.*'];
const MISSING_TOKEN_REASON = 'TOKEN_MISSING';
const REVOKED_REASON = 'TOKEN_REVOKED';

function match(patterns, method) {
  if (patterns.includes(method)) return method;
  let best = null;
  for (const pattern of patterns) {
    if (pattern.endsWith('*') && method.startsWith(pattern.slice(0, -1))) {
      if (best === null || pattern.length > best.length) best = pattern;
    }
  }
  return best;
}

/** The rule for a full method name: {public} or {scopes}; same matching as the Python policy. */
function ruleFor(policy, method) {
  const open = [...(policy.publicMethods || []), ...(policy.exempt ?? DEFAULT_EXEMPT)];
  if (match(open, method) !== null) return { public: true, scopes: [] };
  const methodScopes = policy.methodScopes || {};
  const pattern = match(Object.keys(methodScopes), method);
  return { public: false, scopes: pattern !== null ? methodScopes[pattern] : policy.defaultScopes || [] };
}

function bearerToken(metadata) {
  const [value] = metadata.get(AUTHORIZATION);
  if (typeof value !== 'string') return null;
  const space = value.indexOf(' ');
  if (space < 0 || value.slice(0, space).toLowerCase() !== 'bearer') return null;
  const token = value.slice(space + 1).trim();
  return token || null;
}

function refusalFor(error) {
  const s = grpc.status;
  switch (error.code) {
    case 'UNAUTHENTICATED':
      return [s.UNAUTHENTICATED, error.reason, 'invalid token'];
    case 'INVALID_ARGUMENT':
      return [s.UNAUTHENTICATED, MISSING_TOKEN_REASON, 'invalid token'];
    case 'PERMISSION_DENIED':
      return [s.PERMISSION_DENIED, error.reason, 'permission denied'];
    case 'UNAVAILABLE':
    case 'DEADLINE_EXCEEDED':
      return [s.UNAVAILABLE, error.reason || '', 'authentication unavailable'];
    default:
      return [s.INTERNAL, 'INTERNAL_ERROR', 'internal error'];
  }
}

function refuse(call, [code, reason, details]) {
  const metadata = new grpc.Metadata();
  if (reason) metadata.set(STATUS_DETAILS_KEY, encodeStatusDetails(code, details, reason));
  call.sendStatus({ code, details, metadata });
}

/** Decides for the interceptor: cache, watch, single flight, and the Verify path. */
class Decisions {
  constructor(client, options) {
    const { cacheDecisions = true, coalesceMisses = true, maxBatch, maxEntries, maxBytes,
      stalenessMs, now, initialBackoffMs, maxBackoffMs } = options;
    this.batcher = coalesceMisses ? new VerifyBatcher(client, { maxBatch }) : null;
    this.verifier = this.batcher || client;
    this.cache = cacheDecisions ? new DecisionCache({ maxEntries, maxBytes, now }) : null;
    this.watch = cacheDecisions
      ? new DecisionWatch(client, this.cache, { stalenessMs, initialBackoffMs, maxBackoffMs })
      : null;
    this.inFlight = new Map(); // key -> {mark, generation, promise}
    this.hits = 0;
    this.misses = 0;
    this.bypassed = 0;
    this.refusedLocally = 0;
    this.stored = 0;
    this.notStored = 0;
    if (this.watch) this.watch.start();
  }

  /** Resolves with the claims as a JSON Buffer; rejects with an AuthClientError. */
  decide(token, audience, scopes) {
    if (this.cache === null) {
      this.misses += 1;
      return this.verify(token, audience, scopes);
    }
    const key = decisionKey(token, audience, scopes);
    const current = this.watch.current();
    if (current) {
      const entry = this.cache.get(key);
      if (entry !== null && entry.revoked) {
        this.refusedLocally += 1;
        // The error Verify and VerifyBatch give for it, so refusalFor answers identically.
        return Promise.reject(new AuthClientError(codeForReason(REVOKED_REASON), REVOKED_REASON,
          'token revoked'));
      }
      if (entry !== null) {
        this.hits += 1;
        return Promise.resolve(entry.json);
      }
      this.misses += 1;
    } else {
      this.bypassed += 1;
    }
    // Where the watch stood when Verify was asked. An answer is kept only if it was asked
    // while current, the watch is current when it arrives, with no lapse, cut or reset in
    // between (one generation), and no event applied since voids it (`mark`).
    const mark = this.cache.mark();
    const generation = current ? this.watch.generation : -1;
    let pending = this.inFlight.get(key);
    if (pending === undefined || pending.mark !== mark || pending.generation !== generation) {
      const promise = this.verifier.verify(token, { audience, requiredScopes: scopes }).then(
        (claims) => {
          const json = Buffer.from(JSON.stringify(claims), 'utf8');
          const kept = generation === this.watch.generation && this.watch.current()
            && this.cache.put(key, claims, json, mark);
          return { json, kept };
        },
      ).finally(() => {
        if (this.inFlight.get(key)?.promise === promise) this.inFlight.delete(key);
      });
      pending = { mark, generation, promise };
      this.inFlight.set(key, pending);
    }
    return pending.promise.then(({ json, kept }) => {
      if (kept) this.stored += 1;
      else this.notStored += 1;
      return json;
    });
  }

  async verify(token, audience, scopes) {
    const claims = await this.verifier.verify(token, { audience, requiredScopes: scopes });
    return Buffer.from(JSON.stringify(claims), 'utf8');
  }

  stats() {
    const out = { hits: this.hits, misses: this.misses,
      bypassed: this.bypassed, refusedLocally: this.refusedLocally };
    if (this.cache !== null) {
      Object.assign(out, { stored: this.stored, notStored: this.notStored }, this.cache.stats(), {
        current: this.watch.current(),
        stalenessMs: Number.isFinite(this.watch.stalenessMs()) ? this.watch.stalenessMs() : null,
        stalenessBoundMs: this.watch.stalenessBoundMs,
        subscriptions: this.watch.subscriptions,
      });
    }
    if (this.batcher !== null) out.batches = this.batcher.stats();
    return out;
  }

  close() {
    if (this.watch !== null) this.watch.close();
    if (this.batcher !== null) this.batcher.flush();
  }
}

/**
 * A grpc-js server interceptor verifying every protected call at the sidecar.
 * policy: {audience, defaultScopes, methodScopes: {pattern: [scopes]}, publicMethods, exempt}
 * options: {cacheDecisions = true, coalesceMisses = true, maxEntries = 10000,
 *   maxBytes = 16 MiB, stalenessMs = 3 x heartbeat, maxBatch = 100}
 * The returned interceptor also has `stats()` and `close()` (ends the Watch stream).
 */
function authServerInterceptor(client, policy = {}, options = {}) {
  const decisions = new Decisions(client, options);
  const interceptor = (methodDescriptor, call) => {
    const rule = ruleFor(policy, methodDescriptor.path);
    return new grpc.ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, nextMetadata) {
            metadata.remove(CLAIMS_KEY); // only this interceptor may set it
            if (rule.public) {
              nextMetadata(metadata);
              return;
            }
            const token = bearerToken(metadata);
            if (token === null) {
              refuse(call, [grpc.status.UNAUTHENTICATED, MISSING_TOKEN_REASON, 'missing bearer token']);
              return;
            }
            decisions.decide(token, policy.audience || '', rule.scopes).then((json) => {
              metadata.set(CLAIMS_KEY, json);
              nextMetadata(metadata);
            }, (error) => refuse(call, refusalFor(error)));
          },
        });
      },
    });
  };
  interceptor.stats = () => decisions.stats();
  interceptor.close = () => decisions.close();
  interceptor.decisions = decisions;
  return interceptor;
}

/** The verified claims of a call a handler is serving, or null for a public method. */
function currentClaims(call) {
  const [raw] = call.metadata.get(CLAIMS_KEY);
  return raw ? JSON.parse(Buffer.from(raw).toString('utf8')) : null;
}

module.exports = {
  CLAIMS_KEY,
  DEFAULT_EXEMPT,
  Decisions,
  authServerInterceptor,
  currentClaims,
  ruleFor,
};
