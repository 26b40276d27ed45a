--[[ release.lua: give back a concurrency lease. Request windows are never given back.

KEYS[1]  ado:limit:{key}:leases   zset: lease id -> expiry µs
ARGV[1]  lease id

Returns 1 when the lease was held, 0 when it had already expired or been released.
]]

return redis.call('ZREM', KEYS[1], ARGV[1])
