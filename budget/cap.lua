-- Cap a budget's dimensions at the units the upstream has left before its
-- reset: at most that many more units (calls, or a meter's units such as
-- tokens) get a slot before the reset, at the budget's own pace; a booking
-- wanting more waits for the reset. The cap never delays a call the upstream
-- would take.
-- KEYS[1] the budget hash P{name}:budget (fields: see wait.lua). A cap is
-- two fields: cap, the units still allowed before capat, the reset (µs of
-- the Redis clock); wait.lua spends a booking's units from it when its slot
-- lies before capat. The calls' cap is cap and capat; a meter's, m:NAME:cap
-- and m:NAME:capat.
-- ARGV[1] how far ahead of now a field may lie before it counts as corrupt
-- (µs); then one group of six values per dimension capped: the reset, µs
-- from now; the units the upstream has left; T and tau (µs per unit) of the
-- dimension's limit; the field of its tat ('tat', 'm:NAME:0'); the field of
-- its cap ('cap', 'm:NAME:cap').
-- Units booked for a slot still ahead have not reached the upstream yet: they
-- spend from its count too (as many as the tat lies ahead of the next slot,
-- a lower bound). A response of the window already capped (its reset within
-- a second of capat: the header counts whole seconds, and each server reads
-- it on its own clock) lowers the cap, never raises it: an older response may
-- arrive late. A later reset is a new window and replaces the cap; an earlier
-- one is an older window's word and is ignored.
-- Returns the number of caps set or lowered.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ahead = tonumber(ARGV[1])
local function valid(x)
  -- Corrupt fields count as 0, as in wait.lua.
  x = tonumber(x)
  if x == nil or x ~= x or x < 0 or x > now + ahead then return 0 end
  return x
end
local function f(x) return string.format('%d', x) end
local pv = redis.call('HMGET', KEYS[1], 'pause', 'slack', 'lt')
local pause, slack, lt = valid(pv[1]), valid(pv[2]), tonumber(pv[3])
local set = 0
for i = 2, #ARGV - 5, 6 do
  local resetAt, remaining = now + tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local T, tau, name, cap = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local v = redis.call('HMGET', KEYS[1], name, cap .. 'at', cap)
  local tat, capat, left = valid(v[1]), valid(v[2]), valid(v[3])
  -- The units booked ahead lie one step back from the latest, tat - step -
  -- tau; behind a pause, from its end, where tat - pause counts them. The
  -- calls' step is wait.lua's: the learned interval lt when longer than T
  -- (tau in proportion), plus the slack learned from overshoots, taken
  -- undecayed (the longest step, so the fewest calls: a lower bound).
  local step = T
  if name == 'tat' then
    if lt and lt > T and lt <= ahead then
      tau, step = math.floor(tau * lt / T), lt
    end
    step = step + math.min(slack, step)
  end
  local booked
  if pause > now then
    booked = math.ceil((tat - pause) / step)
  else
    booked = math.ceil((tat - step - tau - now) / step)
  end
  local n = math.max(0, remaining - math.max(0, booked))
  local skip = false
  if capat > now and math.abs(resetAt - capat) < 1000000 then
    skip = n >= left
    resetAt = math.max(resetAt, capat)
  elseif capat > now and resetAt < capat then
    skip = true
  end
  if not skip then
    set = set + 1
    redis.call('HSET', KEYS[1], cap, f(n), cap .. 'at', f(resetAt))
    -- Never shorten the life the key already has.
    local ms = math.ceil((resetAt - now) / 1000) + 1000
    if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], f(ms)) end
  end
end
return set
