-- Apply the upstream's own accounting to a budget: pause it, pull it down to
-- the calls the upstream has left, or both.
-- KEYS[1] the budget hash P{name}:budget (fields: see wait.lua); its name is
-- also the channel the pause is announced on.
-- ARGV[1] pause: no call before now + ARGV[1] µs, or -1 for no pause.
-- ARGV[2] the upstream's reset, µs from now, or -1 for no pull-down;
-- ARGV[3] the calls the upstream has left before its reset.
-- ARGV[4] T; ARGV[5] tau (µs); ARGV[6] '1' to announce with SPUBLISH (Redis
-- Cluster), else PUBLISH; ARGV[7] how far ahead of now a field may lie before
-- it counts as corrupt (µs).
-- A pull-down sets tat to at least reset + tau - remaining * T: at most
-- remaining calls then go before the reset.
-- When the pause grows, its end (µs of the Redis clock) is published on the
-- channel KEYS[1].
-- Returns {end of the pause in force (µs of the Redis clock), or 0 for none,
-- 1 if the pause grew, 1 if the budget was pulled down}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pauseFor, resetIn, remaining = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local T, tau, ahead = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local function f(x) return string.format('%d', x) end
local function field(name)
  local x = tonumber(redis.call('HGET', KEYS[1], name))
  -- Corrupt fields count as 0, as in wait.lua.
  if x == nil or x ~= x or x < 0 or x > now + ahead then return 0 end
  return x
end

local pause, grew, pulled = field('pause'), 0, 0
local last = 0
if pauseFor >= 0 and now + pauseFor > pause then
  pause, grew = now + pauseFor, 1
  redis.call('HSET', KEYS[1], 'pause', f(pause))
  if ARGV[6] == '1' then
    redis.call('SPUBLISH', KEYS[1], f(pause))
  else
    redis.call('PUBLISH', KEYS[1], f(pause))
  end
end
last = math.max(last, pause)
if resetIn >= 0 then
  local target = now + resetIn + tau - remaining * T
  if target > field('tat') then
    redis.call('HSET', KEYS[1], 'tat', f(target))
    pulled = 1
    last = math.max(last, target)
  end
end
if grew == 1 or pulled == 1 then
  -- Never shorten the life the key already has.
  local ms = math.ceil((last - now) / 1000) + 1000
  if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], f(ms)) end
end
if pause <= now then pause = 0 end
return {pause, grew, pulled}
