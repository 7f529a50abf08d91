"""The Lua scripts of `RedisTokenStore`: each one is one atomic step on the server.

Redis runs a script to completion before any other command, and a SIGKILLed client cannot cut
one short (the server has the whole script before it starts), so a rotation is either wholly
done or not at all, and a reuse revokes the family, records the revocation and publishes it in
the same step. All keys of a deployment share one hash tag, so each script touches one slot
(Cluster requirement); keys built inside a script (`fam:` in PURGE) carry that tag too.

Times come from the caller (`now`), never from the server clock, so a store can be tested with
a fixed clock; TTLs are relative seconds computed from that same `now`, plus a margin.
"""

from __future__ import annotations

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
"""

# KEYS: fam, families. ARGV: ttl, expires_at, family_id, then field/value pairs.
# Returns 1 when created, 0 when the id is taken (nothing is overwritten).
CREATE_FAMILY = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
extend_ttl(KEYS[2], ttl)
return 1
"""
)

# KEYS: fam, revoked, feed.
# ARGV: presented, next, now, grace_s, margin_s, feed_maxlen, feed_ttl.
# Returns {outcome, field, value, ...} with the family after the step ({'unknown'} if none).
# The order of checks is TokenStore.rotate's: unknown, revoked/ended, rotated, grace, reused.
ROTATE = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local f = redis.call('HMGET', KEYS[1], 'revoked', 'expires_at', 'current_jti',
                     'previous_jti', 'rotated_at', 'revocation')
local now = tonumber(ARGV[3])
local expires_at = tonumber(f[2])
local outcome
if f[1] == '1' or now >= expires_at then
  outcome = 'revoked'
elseif ARGV[1] == f[3] then
  redis.call('HSET', KEYS[1], 'current_jti', ARGV[2], 'previous_jti', ARGV[1],
             'rotated_at', ARGV[3])
  outcome = 'rotated'
elseif ARGV[1] == f[4] and now < tonumber(f[5]) + tonumber(ARGV[4]) then
  outcome = 'grace'
else
  -- RFC 9700 section 4.14.2: a retired token came back, so the whole family dies; the
  -- revocation is recorded and published in this same step, so it cannot be lost.
  redis.call('HSET', KEYS[1], 'revoked', '1')
  redis.call('ZADD', KEYS[2], 'GT', expires_at, f[6])
  local ttl = math.max(expires_at - now, 0) + tonumber(ARGV[5])
  extend_ttl(KEYS[2], ttl)
  publish(KEYS[3], f[6], expires_at, ARGV[6], ARGV[7])
  outcome = 'reused'
end
local result = redis.call('HGETALL', KEYS[1])
table.insert(result, 1, outcome)
return result
"""
)

# KEYS: revoked, feed[, fam]. ARGV: member, expires_at, ttl, feed_maxlen, feed_ttl.
# A repeat keeps the later expires_at (ZADD GT). With a third key (a family revocation), the
# family is marked revoked in the same step if it exists.
REVOKE = (
    _LIB
    + """
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
extend_ttl(KEYS[1], tonumber(ARGV[3]))
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'revoked', '1')
end
publish(KEYS[2], ARGV[1], ARGV[2], ARGV[4], ARGV[5])
return 1
"""
)

# KEYS: revoked, families. ARGV: now, family key prefix, purge batch.
# Drops expired revocations and ended families, then returns {member, score, ...} of the
# revocations still in force. Ended families go in batches, so one call stays short.
PURGE_AND_LIST = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ended = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, family_id in ipairs(ended) do
  redis.call('DEL', ARGV[2] .. family_id)
  redis.call('ZREM', KEYS[2], family_id)
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
"""
