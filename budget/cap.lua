-- Cap a budget at the calls the upstream has left before its reset: at most
-- that many more calls get a slot before the reset, at the budget's own pace;
-- the next waits for the reset. The cap never delays a call the upstream
-- would take.
-- KEYS[1] the budget hash P{name}:budget (fields: see wait.lua). The cap is
-- two fields: cap, the calls still allowed before capat, the reset (µs of the
-- Redis clock); wait.lua spends one per slot booked before capat.
-- ARGV[1] the reset, µs from now; ARGV[2] the calls the upstream has left;
-- ARGV[3] T; ARGV[4] tau (µs); ARGV[5] how far ahead of now a field may lie
-- before it counts as corrupt (µs).
-- Calls booked for a slot still ahead have not reached the upstream yet: they
-- spend from its count too. A response of the window already capped (its
-- reset within a second of capat: the header counts whole seconds, and each
-- server reads it on its own clock) lowers the cap, never raises it: an older
-- response may arrive late. A later reset is a new window and replaces the
-- cap; an earlier one is an older window's word and is ignored.
-- Returns 1 when the cap was set or lowered, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local resetAt, remaining = now + tonumber(ARGV[1]), tonumber(ARGV[2])
local T, tau, ahead = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local v = redis.call('HMGET', KEYS[1], 'tat', 'pause', 'capat', 'cap')
local function field(i)
  -- Corrupt fields count as 0, as in wait.lua.
  local x = tonumber(v[i])
  if x == nil or x ~= x or x < 0 or x > now + ahead then return 0 end
  return x
end
local function f(x) return string.format('%d', x) end
local tat, pause, capat, left = field(1), field(2), field(3), field(4)

-- The slots booked ahead lie one per T back from the latest, tat - T - tau;
-- behind a pause, from its end, where tat - pause counts them.
local booked
if pause > now then
  booked = math.ceil((tat - pause) / T)
else
  booked = math.ceil((tat - T - tau - now) / T)
end
local n = math.max(0, remaining - math.max(0, booked))

if capat > now and math.abs(resetAt - capat) < 1000000 then
  if n >= left then return 0 end
  resetAt = math.max(resetAt, capat)
elseif capat > now and resetAt < capat then
  return 0
end
redis.call('HSET', KEYS[1], 'cap', f(n), 'capat', f(resetAt))
-- Never shorten the life the key already has.
local ms = math.ceil((resetAt - now) / 1000) + 1000
if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], f(ms)) end
return 1
