-- Pause a budget: no call before the pause's end. (A cap at the calls the
-- upstream has left is cap.lua's.)
-- KEYS[1] the budget hash P{name}:budget (fields: see wait.lua); its name is
-- also the channel the pause is announced on.
-- ARGV[1] pause: no call before now + ARGV[1] µs, or -1 for no pause.
-- ARGV[2], ARGV[3] unused (-1, 0).
-- ARGV[4] T; ARGV[5] tau (µs); ARGV[6] '1' to announce with SPUBLISH (Redis
-- Cluster), else PUBLISH; ARGV[7] how far ahead of now a field may lie before
-- it counts as corrupt (µs).
-- When the pause grows, its end (µs of the Redis clock) is published on the
-- channel KEYS[1].
-- Returns {end of the pause in force (µs of the Redis clock), or 0 for none,
-- 1 if the pause grew, 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pauseFor, ahead = tonumber(ARGV[1]), tonumber(ARGV[7])
local function f(x) return string.format('%d', x) end
local function field(name)
  local x = tonumber(redis.call('HGET', KEYS[1], name))
  -- Corrupt fields count as 0, as in wait.lua.
  if x == nil or x ~= x or x < 0 or x > now + ahead then return 0 end
  return x
end

local pause, grew = field('pause'), 0
if pauseFor >= 0 and now + pauseFor > pause then
  pause, grew = now + pauseFor, 1
  redis.call('HSET', KEYS[1], 'pause', f(pause))
  if ARGV[6] == '1' then
    redis.call('SPUBLISH', KEYS[1], f(pause))
  else
    redis.call('PUBLISH', KEYS[1], f(pause))
  end
end
if grew == 1 then
  -- Never shorten the life the key already has.
  local ms = math.ceil((pause - now) / 1000) + 1000
  if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], f(ms)) end
end
if pause <= now then pause = 0 end
return {pause, grew, 0}
