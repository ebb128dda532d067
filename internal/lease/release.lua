-- Release a lease if it is still ours, optionally storing the value it guards,
-- and tell the waiters.
-- KEYS[1] the lock P{K}; KEYS[2] (optional) the value P{K}:value.
-- ARGV[1] the holder's token; ARGV[2] '1' to notify with SPUBLISH (Redis
-- Cluster), else PUBLISH; ARGV[3] the message for the channel P{K};
-- ARGV[4] (with KEYS[2]) the value; ARGV[5] (with KEYS[2]) its TTL in ms.
-- Returns 1 when released, 0 when the lease was not ours: then nothing is
-- written and nothing is published.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
end
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' then
  redis.call('SPUBLISH', KEYS[1], ARGV[3])
else
  redis.call('PUBLISH', KEYS[1], ARGV[3])
end
return 1
