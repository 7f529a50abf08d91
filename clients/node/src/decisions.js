'use strict';
// DecisionCache: the sidecar's positive Verify decisions, kept at the callee (issue 15).
//
// Key: SHA-256 of [token, audience, sorted required scopes] (the token text itself is not
// kept as a key). An entry is kept and served only while `nbf <= now < exp` (the
// interceptor's wall clock; a token without `exp` is never cached), and is dropped by
// any watch event that voids it: TokenRevoked(iss, jti), FamilyRevoked(iss, sid; `sid` read
// from the claims), KeyRetired(kid), DecisionsReset, and a reset of the watch itself (sync
// reset, a sequence gap, a new epoch). Bounded in entries and in estimated bytes (the
// serialized claims plus a fixed overhead per entry); the least recently used go first.
//
// Counters, with the meanings of the Python client's DecisionCache and WatchState (so the
// exported series mean the same in both): `evictions` (dropped to stay within the bounds),
// `expirations` (found past `exp` by a lookup, and dropped), `dropped` (decisions the watch
// events voided: removed, or turned into refusals; a refusal removed later is not counted
// again, it was counted when the decision became one).
//
// Ordering (auth.proto, Watch): before a Verify the caller notes `mark()`, the count of
// events applied so far; `put` refuses an answer when an event applied since then voids it,
// or when that can no longer be checked (a reset since, or the record of recent events has
// moved past the mark). Refusals by Verify are never cached.
//
// Refusals kept in place (tombstones): TokenRevoked and FamilyRevoked do not remove the
// entries they void; each becomes `revoked: true` and `get` keeps returning it until the
// token's `exp` (not before `nbf`), so the interceptor refuses that token without a Verify.
// That is the sidecar's own answer meanwhile: its verifier checks key, signature, claims,
// time window and audience before revocation (and scopes after), all of which held for this
// exact key when the decision was made, and a revocation outlives the token. What may change
// an earlier check ends the refusal: `exp` (Verify decides, e.g. TOKEN_EXPIRED), KeyRetired
// (its kid), and every reset. A refusal keeps its entry's size in the bounds and leaves by
// LRU like any entry.

const crypto = require('node:crypto');

const ENTRY_OVERHEAD_BYTES = 256;
const RECENT_EVENTS = 4096;
const INVALIDATION_KINDS = ['tokenRevoked', 'familyRevoked', 'keyRetired', 'decisionsReset',
  'resync', 'gap'];

function decisionKey(token, audience, scopes) {
  return crypto.createHash('sha256')
    .update(JSON.stringify([token, audience || '', [...(scopes || [])].sort()]))
    .digest('base64');
}

class DecisionCache {
  constructor({ maxEntries = 10000, maxBytes = 16 * 1024 * 1024, now = () => Date.now() } = {}) {
    if (!(maxEntries > 0) || !(maxBytes > 0)) throw new RangeError('maxEntries and maxBytes must be > 0');
    this.maxEntries = maxEntries;
    this.maxBytes = maxBytes;
    this.now = now;
    this.entries = new Map(); // key -> entry, least recently used first
    this.bytes = 0;
    this.index = new Map(); // 'jti\0iss\0jti' | 'sid\0iss\0sid' | 'kid\0kid' -> Set(key)
    this.applied = 0; // events applied (the `mark`)
    this.recent = []; // [{n, index}] of the last RECENT_EVENTS events; index null = all
    this.invalidations = Object.fromEntries(INVALIDATION_KINDS.map((kind) => [kind, 0]));
    this.evictions = 0; // dropped to stay within the bounds
    this.expirations = 0; // dropped because the token's exp passed
    this.dropped = 0; // decisions the events voided (removed, or turned into refusals)
    this.tombstones = 0; // entries that are refusals (revoked: true), counted in `entries`
  }

  mark() {
    return this.applied;
  }

  /** The live entry for `key` (`revoked: true`: a refusal), or null (expired or not yet
   * valid entries are not served). */
  get(key) {
    const entry = this.entries.get(key);
    if (entry === undefined) return null;
    const now = this.now();
    if (now >= entry.expMs) {
      this.remove(key);
      this.expirations += 1;
      return null;
    }
    if (now < entry.nbfMs) return null;
    this.entries.delete(key); // most recently used last
    this.entries.set(key, entry);
    return entry;
  }

  /** Keep a positive decision made after `mark`; false when it must not be kept: voided
   * since `mark` (or no longer checkable), already outside `nbf..exp` on this clock, or
   * larger than the whole byte bound. */
  put(key, claims, json, mark) {
    if (!this.stillValid(claims, mark)) return false;
    const expMs = Number(claims.exp) * 1000;
    const nbfMs = Number(claims.nbf || 0) * 1000;
    const now = this.now();
    if (!(expMs > now) || now < nbfMs) return false;
    const sid = claims.claims && typeof claims.claims.sid === 'string' ? claims.claims.sid : '';
    const entry = {
      key, claims, json, expMs, nbfMs, revoked: false,
      indexes: [`jti\0${claims.iss}\0${claims.jti}`, `kid\0${claims.kid}`],
      bytes: ENTRY_OVERHEAD_BYTES + key.length + json.length,
    };
    if (sid) entry.indexes.push(`sid\0${claims.iss}\0${sid}`);
    if (entry.bytes > this.maxBytes) return false;
    this.remove(key);
    this.entries.set(key, entry);
    this.bytes += entry.bytes;
    for (const name of entry.indexes) {
      if (!this.index.has(name)) this.index.set(name, new Set());
      this.index.get(name).add(key);
    }
    while (this.entries.size > this.maxEntries || this.bytes > this.maxBytes) {
      this.remove(this.entries.keys().next().value);
      this.evictions += 1;
    }
    return true;
  }

  stillValid(claims, mark) {
    if (mark === this.applied) return true;
    const first = this.recent.length ? this.recent[0].n : this.applied + 1;
    if (mark + 1 < first) return false; // events since the mark are no longer on record
    const sid = claims.claims && typeof claims.claims.sid === 'string' ? claims.claims.sid : '';
    const names = new Set([`jti\0${claims.iss}\0${claims.jti}`, `kid\0${claims.kid}`,
      `sid\0${claims.iss}\0${sid}`]);
    return !this.recent.some((event) => event.n > mark
      && (event.index === null || names.has(event.index)));
  }

  record(kind, index) {
    this.applied += 1;
    this.invalidations[kind] += 1;
    this.recent.push({ n: this.applied, index });
    if (this.recent.length > RECENT_EVENTS) this.recent.shift();
  }

  /** Apply one invalidation. kind: tokenRevoked {iss, jti} | familyRevoked {iss, sid} |
   * keyRetired {kid} | decisionsReset | resync | gap (the last three drop everything).
   * Returns how many decisions it voided (refusals it removes are not counted). */
  invalidate(kind, event = {}) {
    let index = null;
    if (kind === 'tokenRevoked') index = `jti\0${event.iss}\0${event.jti}`;
    else if (kind === 'familyRevoked') index = `sid\0${event.iss}\0${event.sid}`;
    else if (kind === 'keyRetired') index = `kid\0${event.kid}`;
    else if (!INVALIDATION_KINDS.includes(kind)) throw new TypeError(`unknown invalidation ${kind}`);
    this.record(kind, index);
    let voided = 0;
    if (index === null) {
      voided = this.entries.size - this.tombstones;
      this.entries.clear();
      this.index.clear();
      this.bytes = 0;
      this.tombstones = 0;
    } else if (kind === 'keyRetired') {
      for (const key of [...(this.index.get(index) || [])]) {
        if (!this.entries.get(key).revoked) voided += 1;
        this.remove(key);
      }
    } else {
      for (const key of this.index.get(index) || []) { // the sidecar's answer until exp is known
        const entry = this.entries.get(key);
        if (!entry.revoked) {
          entry.revoked = true;
          this.tombstones += 1;
          voided += 1;
        }
      }
    }
    this.dropped += voided;
    return voided;
  }

  remove(key) {
    const entry = this.entries.get(key);
    if (entry === undefined) return;
    this.entries.delete(key);
    this.bytes -= entry.bytes;
    if (entry.revoked) this.tombstones -= 1;
    for (const name of entry.indexes) {
      const keys = this.index.get(name);
      keys.delete(key);
      if (keys.size === 0) this.index.delete(name);
    }
  }

  stats() {
    return {
      entries: this.entries.size, tombstones: this.tombstones, bytes: this.bytes,
      evictions: this.evictions, expirations: this.expirations,
      invalidations: { ...this.invalidations }, dropped: this.dropped,
    };
  }
}

module.exports = { DecisionCache, ENTRY_OVERHEAD_BYTES, INVALIDATION_KINDS, decisionKey };
