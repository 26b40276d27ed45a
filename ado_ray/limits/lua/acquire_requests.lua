--[[ acquire_requests.lua: admit up to n requests at once for a key with only request windows.

acquire.lua's common case (no token window, no concurrency) for n callers of one client,
in one call: the cooldown and every window are read once, then the first `admitted` of
the n are recorded in every window, where admitted = min(n, the room of every window).
All n share one Redis TIME, so this is what n acquire.lua calls in a row would record.
It writes the same structures as acquire.lua, so clients of either script share a key.

KEYS[1]    ado:limit:{key}:cooldown         string: end of the cooldown, µs
KEYS[2..]  ado:limit:{key}:requests:<µs>    zset per request window: member -> admission µs

ARGV[1]    member prefix, unique per call (client id and a counter)
ARGV[2]    n, the number of requests asked for (1 or more)
ARGV[3..]  for each request window, in KEYS order: count, length µs

Returns {now µs, admitted, retry after µs, kind, blockers}: the first `admitted` requests
are admitted, as members `<now>-<prefix>:<j>`; the others are denied, with the retry,
kind and blockers of acquire.lua (0, '', '' when all n are admitted).
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[2])

local cooldown = tonumber(redis.call('GET', KEYS[1]) or '0')
if cooldown > now then
  return {now, 0, cooldown - now, 'cooldown', 'cooldown:0:0'}
end

local admitted, used = n, {}
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 2
  local count, length = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - length)
  used[i] = redis.call('ZCARD', KEYS[i])
  admitted = math.min(admitted, math.max(count - used[i], 0))
end

if admitted > 0 then
  local stamp = t[1] .. string.format('%06d', tonumber(t[2])) .. '-' .. ARGV[1] .. ':'
  local entries = {}
  for j = 1, admitted do
    entries[2 * j - 1] = now
    entries[2 * j] = stamp .. j
  end
  for i = 2, #KEYS do
    for k = 1, #entries, 2000 do
      redis.call('ZADD', KEYS[i], unpack(entries, k, math.min(k + 1999, #entries)))
    end
    redis.call('PEXPIRE', KEYS[i], math.floor(tonumber(ARGV[3 + (i - 2) * 2 + 1]) / 1000) + 1)
  end
end
if admitted == n then
  return {now, admitted, 0, '', ''}
end

-- the rest are denied: the oldest entry that must leave is the (in use - count + 1)-th oldest
local longest, blockers = 0, {}
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 2
  local count, length = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local in_use = used[i] + admitted
  if in_use >= count then
    local entry = redis.call('ZRANGE', KEYS[i], in_use - count, in_use - count, 'WITHSCORES')
    longest = math.max(longest, tonumber(entry[2]) + length - now)
    blockers[#blockers + 1] = 'requests:' .. (i - 1) .. ':' .. in_use
  end
end
return {now, admitted, longest, 'requests', table.concat(blockers, ',')}
