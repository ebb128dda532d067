-- Delete a cached value and break any fill in progress, so that a load that
-- started before the delete cannot store its older value after it.
-- KEYS[1] the lock P{K}; KEYS[2] the value P{K}:value.
-- ARGV[1] '1' to notify with SPUBLISH (Redis Cluster), else PUBLISH;
-- ARGV[2] the message for the channel P{K}.
-- Returns the number of keys deleted.
local n = redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[1] == '1' then
  redis.call('SPUBLISH', KEYS[1], ARGV[2])
else
  redis.call('PUBLISH', KEYS[1], ARGV[2])
end
return n
