-- Acquire a lease on a name, with a fencing token.
-- KEYS[1] the lock P{K}; KEYS[2] the fencing counter P{K}:fence.
-- ARGV[1] the holder's random token; ARGV[2] the lease in ms;
-- ARGV[3] how long the fencing counter outlives its last use, in ms.
-- Returns {1, fence} when acquired, {0, pttl} when someone else holds it.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  -- GET, not EXISTS: a key of another type raises WRONGTYPE instead of
  -- looking like a lock that is held.
  if redis.call('GET', KEYS[1]) == ARGV[1] then
    -- Ours already: this is a retry of a call whose reply was lost.
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(redis.call('GET', KEYS[2]) or '0')}
  end
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
-- A foreign counter undoes the SET above: the lock is not taken.
local ok, last = pcall(redis.call, 'GET', KEYS[2])
if not ok then
  redis.call('DEL', KEYS[1])
  return redis.error_reply(type(last) == 'table' and last.err or tostring(last))
end
last = tonumber(last or '0')
if not last then
  redis.call('DEL', KEYS[1])
  return redis.error_reply('LOCKSMITH ' .. KEYS[2] .. ' is not a fencing counter')
end
local t = redis.call('TIME')
local fence = math.max(last + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('SET', KEYS[2], string.format('%d', fence), 'PX', ARGV[3])
return {1, fence}
