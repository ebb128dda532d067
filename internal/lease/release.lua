-- Release a lease if it is still ours, and tell the waiters.
-- KEYS[1] the lock P{K}; KEYS[2], for a lock with a fencing counter, the
-- counter P{K}:fence.
-- ARGV[1] the holder's token; ARGV[2] '1' to notify with SPUBLISH (Redis
-- Cluster), else PUBLISH; ARGV[3] the message for the channel P{K};
-- ARGV[4], with KEYS[2], the holder's fencing token.
-- Returns 0 when the lease was not ours (nothing is written or published),
-- 1 when released, {1, error} when released but the message could not be
-- published (an ACL user without channel permissions, say), 2 when the
-- lease is gone and nobody took it since the holder did (the counter still
-- holds its fencing token): an earlier try of this release ran, its reply
-- lost (or the lease ran out unused by others).
local held = redis.call('GET', KEYS[1])
if held ~= ARGV[1] then
  if not held and KEYS[2] and ARGV[4] then
    local ok, f = pcall(redis.call, 'GET', KEYS[2])
    if ok and f == ARGV[4] then return 2 end
  end
  return 0
end
redis.call('DEL', KEYS[1])
local cmd = 'PUBLISH'
if ARGV[2] == '1' then cmd = 'SPUBLISH' end
local ok, err = pcall(redis.call, cmd, KEYS[1], ARGV[3])
if not ok then
  return {1, type(err) == 'table' and err.err or tostring(err)}
end
return 1
