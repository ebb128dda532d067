-- Give back what a caller that gave up had booked (its slot, or its place in
-- the background line), or settle what a call really spent.
-- KEYS[1] the budget hash P{name}:budget (fields: see wait.lua).
-- ARGV[1] 'slot' or 'place'.
-- place: ARGV[2] the place; ARGV[3] T.
-- slot: ARGV[2] the slot booked; ARGV[3] the background interval Tb for a
-- background booking given back, else 0; from ARGV[4], one group of seven
-- values per dimension: kind, the field of its tat, its T (µs per unit),
-- units, the tat the booking set, the tat before it (or -1 when unknown),
-- the field of its cap ('cap', 'm:NAME:cap'; capat is that name and 'at')
-- or ''. The kinds:
--   l  a limit on calls, paced: only the latest booking is undone. Every
--      booking moves tat forward, so the field still holding what the
--      caller's booking set means the caller's was the last: moving it back
--      (to the tat before it when known, else by units·T) undoes it without
--      giving anyone a slot that another call holds.
--   u  a token bucket that units (negative: given back) are added to, booked
--      or not since: tat = max(tat, now) + units·T for more (the call went:
--      nothing waits for it), max(now, tat + units·T) for fewer (a bucket can
--      always take units back), or the tat before the booking when it is the
--      latest and all of its units are given back.
-- Either way, a slot before the reset of the dimension's cap (see cap.lua)
-- moves the cap by the units given back or spent.
-- Returns 1 when the first group is of kind l and was given back, else 0.
local function n(name) return tonumber(redis.call('HGET', KEYS[1], name)) end
local function f(x) return string.format('%d', x) end
if ARGV[1] == 'place' then
  local q, T = tonumber(ARGV[2]), tonumber(ARGV[3])
  if n('bq') ~= q + T then return 0 end
  redis.call('HSET', KEYS[1], 'bq', f(q))
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The furthest ahead of now a field is written (maxAhead, ten years, in
-- µs): further, it would read as corrupt, and the budget start afresh.
local ahead = 315360000000000
local slot, Tb = tonumber(ARGV[2]), tonumber(ARGV[3])
local first = 0
for i = 4, #ARGV - 6, 7 do
  local kind, name, T, units = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local nt, prev, cap = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), ARGV[i + 6]
  local tat, moved = n(name), false
  if kind == 'l' then
    if tat == nt then
      if prev < 0 then prev = nt - units * T end
      redis.call('HSET', KEYS[1], name, f(prev))
      moved, units = true, -units
      if i == 4 then first = 1 end
    end
  elseif tat or units > 0 then
    tat = tat or 0
    if units > 0 then
      tat = math.min(math.max(tat, now) + units * T, now + ahead)
    elseif tat == nt and prev >= 0 then
      tat = prev
    else
      tat = math.max(now, tat + units * T)
    end
    redis.call('HSET', KEYS[1], name, f(tat))
    if units > 0 and redis.call('PTTL', KEYS[1]) < math.ceil((tat - now) / 1000) + 1000 then
      redis.call('PEXPIRE', KEYS[1], f(math.ceil((tat - now) / 1000) + 1000))
    end
    moved = true
  end
  if moved and cap ~= '' then
    local capat, left = n(cap .. 'at'), n(cap)
    if capat and left and capat > now and slot < capat then
      redis.call('HSET', KEYS[1], cap, f(math.max(0, left - units)))
    end
  end
end
if first == 1 and Tb > 0 and n('btat') == slot + Tb then
  redis.call('HSET', KEYS[1], 'btat', f(slot))
end
return first
