-- Release a lease if it is still ours, and tell the waiters.
-- KEYS[1] the lock P{K}.
-- ARGV[1] the holder's token; ARGV[2] '1' to notify with SPUBLISH (Redis
-- Cluster), else PUBLISH; ARGV[3] the message for the channel P{K}.
-- Returns 0 when the lease was not ours (nothing is written or published),
-- 1 when released, {1, error} when released but the message could not be
-- published (an ACL user without channel permissions, say).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local cmd = 'PUBLISH'
if ARGV[2] == '1' then cmd = 'SPUBLISH' end
local ok, err = pcall(redis.call, cmd, KEYS[1], ARGV[3])
if not ok then
  return {1, type(err) == 'table' and err.err or tostring(err)}
end
return 1
