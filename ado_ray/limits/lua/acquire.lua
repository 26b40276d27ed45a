--[[ acquire.lua: admit one request for one limit key, or record nothing at all.

Checks the cooldown, every request window, the token window and the concurrency leases
first; only when all of them have room does it record one request in every window, the
token estimate and a lease. Time is Redis TIME in microseconds, never the client's clock;
every score below is microseconds since the epoch. Entries whose score is <= now - length
have left their window, so no window of that length ever holds more than `count`.

KEYS[1]    ado:limit:{key}:cooldown         string: end of the cooldown, µs
KEYS[2]    ado:limit:{key}:leases           zset: lease id -> expiry µs
KEYS[3]    ado:limit:{key}:tokens           zset: reservation id -> admission µs
KEYS[4]    ado:limit:{key}:tokens:amount    hash: reservation id -> tokens
KEYS[5..]  ado:limit:{key}:requests:<µs>    zset per request window: member -> admission µs

ARGV[1]    member suffix, unique per call (client id and a counter)
ARGV[2]    token estimate to reserve
ARGV[3]    token limit per token window; 0 when the key has no token limit
ARGV[4]    token window length, µs
ARGV[5]    concurrency limit; 0 when the key has none
ARGV[6]    lease id
ARGV[7]    lease ttl, µs
ARGV[8..]  for each request window, in KEYS order: count, length µs

Returns {1, now µs, member, lease id or ''} when admitted (member is the reservation id),
or {0, retry after µs, kind, blockers} when denied: kind is the blocker with the longest
wait ('cooldown', 'requests', 'tokens', 'concurrency'); blockers is a comma-separated list
of kind:window index (1-based, 0 if none):in use.
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local need = tonumber(ARGV[2])
local token_limit = tonumber(ARGV[3])
local token_length = tonumber(ARGV[4])
local concurrency = tonumber(ARGV[5])
local lease_ttl = tonumber(ARGV[7])

local function pexpire(key, micros)
  redis.call('PEXPIRE', key, math.floor(micros / 1000) + 1)
end

local cooldown = tonumber(redis.call('GET', KEYS[1]) or '0')
if cooldown > now then
  return {0, cooldown - now, 'cooldown', 'cooldown:0:0'}
end

local longest, kind, blockers = 0, '', {}
local function block(retry, what, detail)
  blockers[#blockers + 1] = what .. ':' .. detail
  if retry > longest then
    longest, kind = retry, what
  end
end

-- request windows: the oldest entry that must leave is the (used - count + 1)-th oldest
for i = 5, #KEYS do
  local a = 8 + (i - 5) * 2
  local count, length = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - length)
  local used = redis.call('ZCARD', KEYS[i])
  if used >= count then
    local entry = redis.call('ZRANGE', KEYS[i], used - count, used - count, 'WITHSCORES')
    block(tonumber(entry[2]) + length - now, 'requests', (i - 4) .. ':' .. used)
  end
end

-- tokens: the sum of reservations inside the window, plus the estimate, must fit
if token_limit > 0 then
  local cutoff = now - token_length
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cutoff)
  for k = 1, #gone, 1000 do
    redis.call('HDEL', KEYS[4], unpack(gone, k, math.min(k + 999, #gone)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
  local entries = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  local amounts, used = {}, 0
  for k = 1, #entries, 2000 do
    local ids = {}
    for m = k, math.min(k + 1999, #entries), 2 do
      ids[#ids + 1] = entries[m]
    end
    local part = redis.call('HMGET', KEYS[4], unpack(ids))
    for m = 1, #ids do
      local amount = tonumber(part[m]) or 0
      amounts[#amounts + 1] = amount
      used = used + amount
    end
  end
  if used >= token_limit or used + need > token_limit then
    local retry, left = token_length, used
    for k = 1, #amounts do
      left = left - amounts[k]
      if left < token_limit and left + need <= token_limit then
        retry = tonumber(entries[2 * k]) + token_length - now
        break
      end
    end
    block(retry, 'tokens', '0:' .. used)
  end
end

-- concurrency: leases whose expiry has passed free their slot
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local active = redis.call('ZCARD', KEYS[2])
  if active >= concurrency then
    local first = active - concurrency
    local entry = redis.call('ZRANGE', KEYS[2], first, first, 'WITHSCORES')
    block(tonumber(entry[2]) - now, 'concurrency', '0:' .. active)
  end
end

if #blockers > 0 then
  return {0, longest, kind, table.concat(blockers, ',')}
end

-- everything has room: record it all
local member = t[1] .. string.format('%06d', tonumber(t[2])) .. '-' .. ARGV[1]
for i = 5, #KEYS do
  redis.call('ZADD', KEYS[i], now, member)
  pexpire(KEYS[i], tonumber(ARGV[8 + (i - 5) * 2 + 1]))
end
if token_limit > 0 then
  redis.call('ZADD', KEYS[3], now, member)
  redis.call('HSET', KEYS[4], member, need)
  pexpire(KEYS[3], token_length)
  pexpire(KEYS[4], token_length)
end
local lease_id = ''
if concurrency > 0 then
  lease_id = ARGV[6]
  redis.call('ZADD', KEYS[2], now + lease_ttl, lease_id)
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  pexpire(KEYS[2], tonumber(last[2]) - now)
end
return {1, now, member, lease_id}
