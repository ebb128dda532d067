-- Remove a key from a pool (Options.Keys) for the whole fleet: a revoked
-- credential (Budget.Remove, a 401 observed through a reservation).
-- KEYS[1] the budget's hash P{name}:budget, whose channel the removal goes
-- on; KEYS[2] the pool's index P{name}:budget:keys (see keys.lua), which
-- the key leaves and whose generation becomes now, so that every server
-- announces its keys again at its next booking and hears of the removal
-- even if it missed the message; KEYS[3] P{name}:budget:removed, the ids
-- of the keys removed, each with when (µs of the Redis clock); it outlives
-- its latest removal by ARGV[2] ms: servers that still list the key in
-- Options.Keys, restarted meanwhile, do not book it again; KEYS[4] the
-- key's hash, deleted.
-- ARGV[1] the key's id; ARGV[3] '1' to announce with SPUBLISH (Redis
-- Cluster), else PUBLISH. Every server hears 'r ID', and its callers
-- sleeping on a slot of the key book again on the others.
-- Returns 1 when the key was not removed before, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new = redis.call('HSETNX', KEYS[3], ARGV[1], string.format('%d', now))
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', string.format('%d', -now), '#')
redis.call('DEL', KEYS[4])
local msg = 'r ' .. ARGV[1]
if ARGV[3] == '1' then
  redis.call('SPUBLISH', KEYS[1], msg)
else
  redis.call('PUBLISH', KEYS[1], msg)
end
return new
