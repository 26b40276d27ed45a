--[[ renew.lua: extend a live concurrency lease (the holder's heartbeat).

A lease whose expiry has passed is gone for good: its slot may already be someone else's.

KEYS[1]  ado:limit:{key}:leases   zset: lease id -> expiry µs
ARGV[1]  lease id
ARGV[2]  new ttl from now, µs

Returns 1 when renewed, 0 when the lease had expired or was released.
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expiry = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if expiry <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.floor((tonumber(last[2]) - now) / 1000) + 1)
return 1
