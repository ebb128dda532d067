-- Extend a lease if it is still ours.
-- KEYS[1] the lock P{K}. ARGV[1] the holder's token; ARGV[2] the lease in ms.
-- Returns 1 when extended, 0 when the lease was not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
