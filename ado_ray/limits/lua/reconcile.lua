--[[ reconcile.lua: replace a token reservation's estimate with the actual count.

Only a reservation still inside its token window is adjusted; one that has left the
window no longer counts, so there is nothing to correct.

KEYS[1]  ado:limit:{key}:tokens          zset: reservation id -> admission µs
KEYS[2]  ado:limit:{key}:tokens:amount   hash: reservation id -> tokens
ARGV[1]  reservation id (the member returned by acquire.lua)
ARGV[2]  actual tokens

Returns 1 when adjusted, 0 when the reservation is gone.
]]

if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
