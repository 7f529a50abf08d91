"""The Lua scripts of `RedisTokenStore`: each one is one atomic step on the server.

Redis runs a script to completion before any other command, and a SIGKILLed client cannot cut
one short (the server has the whole script before it starts), so a rotation is either wholly
done or not at all, and a reuse revokes the family, records the revocation at its full horizon
and publishes it in the same step. Every key a script is given belongs to one partition (one
hash tag, `redis_keys`), so each script touches one slot (Cluster requirement); keys built
inside a script (`fam:` in PURGE) carry that tag too.

Deadlines (issue 13): every write script first reads the server's `TIME` and, past the
caller's `deadline_ms`, returns `late` having done nothing. A script delayed in the network
(a link cut silently, then healed) therefore never applies after its caller was told
UNAVAILABLE. Reading `TIME` before writing needs effect replication (Redis >= 5; the default
from 7). Token times otherwise come from the caller (`now`), never from the server clock, so a
store can be tested with a fixed clock; TTLs are relative seconds computed from that `now`.
"""

from __future__ import annotations

LATE = "late"

# Shared helpers, prepended to every script.
_LIB = """
local function extend_ttl(key, ttl)
  local current = redis.call('TTL', key)
  ttl = tonumber(ttl)
  if current < ttl then redis.call('EXPIRE', key, ttl) end
end
local function publish(feed, member, expires_at, maxlen, feed_ttl)
  redis.call('XADD', feed, 'MAXLEN', '~', maxlen, '*', 'r', member, 'e', expires_at)
  extend_ttl(feed, feed_ttl)
end
local function too_late(deadline_ms)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(deadline_ms)
end
local function within(requested, granted)
  local have = {}
  for s in string.gmatch(granted, '%S+') do have[s] = true end
  for s in string.gmatch(requested, '%S+') do
    if not have[s] then return false end
  end
  return true
end
"""

# KEYS: fam, families. ARGV: deadline_ms, ttl, expires_at, family_id, then field/value pairs.
# Returns 1 when created, 0 when the id is taken (nothing is overwritten), 'late'.
CREATE_FAMILY = (
    _LIB
    + """
if too_late(ARGV[1]) then return 'late' end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
extend_ttl(KEYS[2], ttl)
return 1
"""
)

# KEYS: fam, revoked, feed.
# ARGV: deadline_ms, presented, next, now, grace_s, margin_s, feed_maxlen, feed_ttl,
#       subject, issuer, scope, revoke_extra_s.
# Returns {outcome, field, value, ...} with the family after the step ({'unknown'} if none,
# {'late'} past the deadline); on reuse the outcome is followed by the revocation's
# expires_at, then the fields. The order of checks is TokenStore.rotate's.
ROTATE = (
    _LIB
    + """
if too_late(ARGV[1]) then return {'late'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local f = redis.call('HMGET', KEYS[1], 'revoked', 'expires_at', 'current_jti',
                     'previous_jti', 'rotated_at', 'revocation', 'subject', 'issuer', 'scope')
local presented, nxt = ARGV[2], ARGV[3]
local now = tonumber(ARGV[4])
local expires_at = tonumber(f[2])
local outcome
local extra = {}
if f[7] ~= ARGV[9] or f[8] ~= ARGV[10] then
  outcome = 'mismatch'
elseif f[1] == '1' or now >= expires_at then
  outcome = 'revoked'
elseif presented == f[4] and nxt == f[3] then
  outcome = 'rotated'  -- the same rotation retried after a lost reply: nothing to do
else
  local current = presented == f[3]
  local grace = presented == f[4] and now < tonumber(f[5]) + tonumber(ARGV[5])
  if current or grace then
    if ARGV[11] ~= '' and not within(ARGV[11], f[9]) then
      outcome = 'scope_widened'
    elseif grace then
      outcome = 'grace'
    else
      redis.call('HSET', KEYS[1], 'current_jti', nxt, 'previous_jti', presented,
                 'rotated_at', ARGV[4])
      outcome = 'rotated'
    end
  else
    -- RFC 9700 section 4.14.2: a retired token came back, so the whole family dies; the
    -- revocation (covering the access tokens minted at the family's end) is recorded and
    -- published in this same step, so it cannot be lost or cut short.
    local horizon = expires_at + tonumber(ARGV[12])
    redis.call('HSET', KEYS[1], 'revoked', '1')
    redis.call('ZADD', KEYS[2], 'GT', horizon, f[6])
    extend_ttl(KEYS[2], math.max(horizon - now, 0) + tonumber(ARGV[6]))
    publish(KEYS[3], f[6], horizon, ARGV[7], ARGV[8])
    outcome = 'reused'
    extra = {tostring(horizon)}
  end
end
local result = redis.call('HGETALL', KEYS[1])
for i = #extra, 1, -1 do table.insert(result, 1, extra[i]) end
table.insert(result, 1, outcome)
return result
"""
)

# KEYS: revoked, feed, then the family key of each family revocation (in order).
# ARGV: deadline_ms, ttl, feed_maxlen, feed_ttl, then (member, expires_at, family key index or
# 0) per revocation, applied as one step; a repeat keeps the later expires_at (ZADD GT still
# adds a new member); a family revocation also marks its family revoked if it exists.
# Only a revocation that is new or lengthens its horizon (ZADD CH) is published, so writing
# back what the store already has (issue 16) costs no feed entry. Returns how many changed.
REVOKE = (
    _LIB
    + """
if too_late(ARGV[1]) then return 'late' end
local written = 0
for i = 5, #ARGV, 3 do
  local member, expires_at, fam = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local changed = redis.call('ZADD', KEYS[1], 'GT', 'CH', expires_at, member)
  if fam > 0 and redis.call('EXISTS', KEYS[fam]) == 1 then
    redis.call('HSET', KEYS[fam], 'revoked', '1')
  end
  if changed > 0 then
    publish(KEYS[2], member, expires_at, ARGV[3], ARGV[4])
    written = written + 1
  end
end
extend_ttl(KEYS[1], tonumber(ARGV[2]))
return written
"""
)

# KEYS: epoch. ARGV: deadline_ms, candidate. Sets the epoch if absent; returns the epoch.
EPOCH = (
    _LIB
    + """
local current = redis.call('GET', KEYS[1])
if current then return current end
if too_late(ARGV[1]) then return {'late'} end
redis.call('SET', KEYS[1], ARGV[2], 'NX')
return redis.call('GET', KEYS[1])
"""
)

# KEYS: revoked, families. ARGV: now, family key prefix, purge batch.
# Drops expired revocations and ended families (these in batches, so one call stays short).
_PURGE_BODY = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ended = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, family_id in ipairs(ended) do
  redis.call('DEL', ARGV[2] .. family_id)
  redis.call('ZREM', KEYS[2], family_id)
end
"""

# The purge alone; returns 1.
PURGE = _PURGE_BODY + "return 1\n"

# KEYS: feed, revocations (one partition's). ARGV: cursor (a stream id, '0-0' for "before the
# first entry"), count, two horizons.
# Returns {'gap'} when the stream cannot vouch for what came after the cursor: the entry at the
# cursor is gone (trimmed, expired with the key, or lost with the data) or entries after it
# were trimmed (XINFO's max-deleted-entry-id, Redis >= 7.0). Otherwise {'ok', entries, n1, n2}
# with up to `count` entries after the cursor, oldest first, and how many revocations have
# expires_at >= each horizon (redis_revocations: the per-partition loss check).
SINCE = """
local cursor = ARGV[1]
local function held(from) return redis.call('ZCOUNT', KEYS[2], from, '+inf') end
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if cursor == '0-0' then return {'ok', {}, held(ARGV[3]), held(ARGV[4])} end
  return {'gap'}
end
if cursor ~= '0-0' and #redis.call('XRANGE', KEYS[1], cursor, cursor) == 0 then
  return {'gap'}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' and before(cursor, info[i + 1]) then return {'gap'} end
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. cursor, '+', 'COUNT', tonumber(ARGV[2]))
return {'ok', entries, held(ARGV[3]), held(ARGV[4])}
"""

# The purge, then {member, score, ...} of the revocations still in force (same KEYS, ARGV).
PURGE_AND_LIST = (
    _PURGE_BODY + "return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')\n"
)

# Upgrading from layout version 1 (redis_keys): a version-1 family moves to its partition the
# first time it is presented, in two steps on two slots:
#
# TAKE_V1 -- KEYS: the version-1 family hash. ARGV: deadline_ms.
# Returns its fields as they were ({} when absent or already taken, {'late'} past the
# deadline), and marks it revoked and `migrated` in the same step: from then on version-1
# sidecars answer REVOKED for it (fail closed) and no other version-2 sidecar takes it again,
# so it can never be rotated on both sides.
TAKE_V1 = (
    _LIB
    + """
if too_late(ARGV[1]) then return {'late'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if redis.call('HGET', KEYS[1], 'migrated') == '1' then return {} end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[1], 'revoked', '1', 'migrated', '1')
return fields
"""
)

# ADOPT -- KEYS: fam, families, revoked (the family's partition). ARGV: ttl, expires_at,
# family_id, then field/value pairs (TAKE_V1's answer). Creates the family unless it exists;
# a family revocation already recorded in the partition (a Revoke by a version-2 sidecar of a
# family it had not seen yet) leaves it revoked. No deadline: it re-creates what TAKE_V1
# took and decides nothing, so running late loses nothing, and refusing would lose the family.
ADOPT = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
local member = redis.call('HGET', KEYS[1], 'revocation')
if member and redis.call('ZSCORE', KEYS[3], member) then
  redis.call('HSET', KEYS[1], 'revoked', '1')
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
extend_ttl(KEYS[2], ttl)
return 1
"""
)
