-- Acquire a lease on a name, or read the value it guards.
-- KEYS[1] the lock P{K}; KEYS[2] the fencing counter P{K}:fence;
-- KEYS[3] (optional) the value P{K}:value, read first.
-- ARGV[1] the holder's random token; ARGV[2] the lease in ms;
-- ARGV[3] how long the fencing counter outlives its last use, in ms.
-- Returns the value (a bulk string) when KEYS[3] holds one, {1, fence} when
-- acquired, {0, pttl} when someone else holds the lease.
if KEYS[3] then
  local v = redis.call('GET', KEYS[3])
  if v then return v end
end
-- GET, not EXISTS: a key of another type raises WRONGTYPE instead of looking
-- like a lock that is held forever.
if redis.call('GET', KEYS[1]) then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl < 0 then
    return redis.error_reply('LOCKSMITH ' .. KEYS[1] .. ' has no expiry: not a locksmith lock')
  end
  return {0, pttl}
end
-- The fencing token is max(last + 1, server time in microseconds): strictly
-- increasing while the counter lives, and still increasing after the counter
-- is lost (expired, evicted, restarted without persistence) as long as the
-- server clock does not step back.
local last = redis.call('GET', KEYS[2])
if last then
  last = tonumber(last)
  if not last then
    return redis.error_reply('LOCKSMITH ' .. KEYS[2] .. ' is not a fencing counter')
  end
else
  last = 0
end
local t = redis.call('TIME')
local fence = math.max(last + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('SET', KEYS[2], string.format('%d', fence), 'PX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, fence}
