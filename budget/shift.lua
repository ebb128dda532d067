-- Move the fleet's schedule on past a call that went late.
-- KEYS[1] the budget hash P{name}:budget (fields: see wait.lua); its name is
-- also the channel the move is announced on.
-- ARGV[1] from, the slot of the call that went late, and ARGV[2] d, how
-- late it went (µs); ARGV[3] tau (µs); ARGV[4] '1' to announce with
-- SPUBLISH (Redis Cluster), else PUBLISH; ARGV[5] how far ahead of now a
-- field may lie before it counts as corrupt (µs).
-- An upstream that allows no burst counts a call from when it arrives: the
-- next one must come a whole interval after it, not after its slot. When
-- a call leaves d late, every slot booked after it moves d later: the next
-- free slot (tat - tau, when it lies past from) here, and the slots Waits
-- sleep on, by each server itself when it hears "s now from d" on the
-- channel KEYS[1] (no round trip each).
-- Returns now (µs of the Redis clock), or 0 when no slot lay past from:
-- nothing was booked after the late call, and nothing moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local from, d, tau, ahead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local function f(x) return string.format('%d', x) end
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat'))
-- A corrupt tat is left for wait.lua to mend.
if tat == nil or tat ~= tat or tat > now + ahead or tat - tau <= from then
  return 0
end
redis.call('HSET', KEYS[1], 'tat', f(tat + d))
local msg = 's ' .. f(now) .. ' ' .. f(from) .. ' ' .. f(d)
-- A publish refused (an ACL without the channel) still leaves the move
-- made: this server's own sleepers move on the reply.
local cmd = 'PUBLISH'
if ARGV[4] == '1' then cmd = 'SPUBLISH' end
pcall(redis.call, cmd, KEYS[1], msg)
return now
