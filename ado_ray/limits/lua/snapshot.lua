--[[ snapshot.lua: what a key is using right now (read only).

KEYS[1]    ado:limit:{key}:cooldown         string: end of the cooldown, µs
KEYS[2]    ado:limit:{key}:leases           zset: lease id -> expiry µs
KEYS[3]    ado:limit:{key}:tokens           zset: reservation id -> admission µs
KEYS[4]    ado:limit:{key}:tokens:amount    hash: reservation id -> tokens
KEYS[5..]  ado:limit:{key}:requests:<µs>    zset per request window
ARGV[1]    token window length µs; 0 when the key has no token limit
ARGV[2..]  length µs of each request window, in KEYS order

Returns {now µs, cooldown end µs (0 when none), tokens used, {admissions per window},
{lease id, expiry µs, ...} for live leases}.
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local cooldown = tonumber(redis.call('GET', KEYS[1]) or '0')
if cooldown <= now then
  cooldown = 0
end

local counts = {}
for i = 5, #KEYS do
  counts[#counts + 1] = redis.call('ZCOUNT', KEYS[i], now - tonumber(ARGV[i - 3]) + 1, '+inf')
end

local used = 0
local token_length = tonumber(ARGV[1])
if token_length > 0 then
  local ids = redis.call('ZRANGEBYSCORE', KEYS[3], now - token_length + 1, '+inf')
  for k = 1, #ids, 1000 do
    local part = redis.call('HMGET', KEYS[4], unpack(ids, k, math.min(k + 999, #ids)))
    for m = 1, #part do
      used = used + (tonumber(part[m]) or 0)
    end
  end
end

local leases = redis.call('ZRANGEBYSCORE', KEYS[2], now + 1, '+inf', 'WITHSCORES')
return {now, cooldown, used, counts, leases}
