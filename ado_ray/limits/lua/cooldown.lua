--[[ cooldown.lua: block every acquisition of a key until a provider's reset time.

A cooldown is only ever lengthened; a reset time already past changes nothing. The key
expires when the cooldown ends.

KEYS[1]  ado:limit:{key}:cooldown   string: end of the cooldown, µs
ARGV[1]  end of the cooldown, µs since the epoch

Returns the end of the cooldown in force, µs (0 when none).
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wanted = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current <= now then
  current = 0
end
if wanted <= now or wanted <= current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', math.floor((wanted - now) / 1000) + 1)
return wanted
