-- Give back what a caller that gave up had booked, when nothing was booked
-- after it: its slot, or its place in the background line.
-- KEYS[1] the budget hash P{name}:budget.
-- ARGV[1] 'slot' or 'place'.
-- slot: ARGV[2] the tat the booking set; ARGV[3] T; ARGV[4] the slot;
-- ARGV[5] the background interval Tb for a background booking, else 0.
-- place: ARGV[2] the place; ARGV[3] T.
-- Every booking moves tat (or bq) forward, so the field still holding what
-- the caller's booking set means the caller's was the last: moving it back
-- by T undoes it without giving anyone a slot that another call holds.
-- A slot before the reset of a cap (see cap.lua) gives its call back to the
-- cap.
-- Returns 1 when given back, 0 when a later booking came first.
local function n(name) return tonumber(redis.call('HGET', KEYS[1], name)) end
local function f(x) return string.format('%d', x) end
local T = tonumber(ARGV[3])
if ARGV[1] == 'place' then
  local q = tonumber(ARGV[2])
  if n('bq') ~= q + T then return 0 end
  redis.call('HSET', KEYS[1], 'bq', f(q))
  return 1
end
local nt, slot, Tb = tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])
if n('tat') ~= nt then return 0 end
redis.call('HSET', KEYS[1], 'tat', f(nt - T))
local capat, left = n('capat'), n('cap')
if capat and left and slot < capat then
  redis.call('HSET', KEYS[1], 'cap', f(left + 1))
end
if Tb > 0 and n('btat') == slot + Tb then
  redis.call('HSET', KEYS[1], 'btat', f(slot))
end
return 1
