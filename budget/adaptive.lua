-- The learned rate of a budget with Options.Adaptive: the upstream does not
-- state its limit, Limit.Rate is a ceiling, and the fleet learns the rate
-- the upstream accepts, one rate for every server.
-- KEYS[1] the budget hash P{name}:budget (fields: see wait.lua). The learned
-- fields, instants and intervals in µs:
--   lt  the learned emission interval: wait.lua paces the calls at it when
--       it is longer than T (missing, or T: the ceiling)
--   lw  the interval in force when the latest cut came: the rate that drew
--       a 429, near which the rate rises cautiously
--   la  when the latest cut came
--   lu  u: the calls the upstream accepted since the latest cut while the
--       fleet paced at the learned rate, plus a credit for the time passed
--   lg  when lu last moved
--   le  until when the learned fields are worth keeping: the key outlives
--       it by a second (wait.lua)
-- The rate, as a share of the ceiling (ρ = T/lt), follows u on a cubic, as
-- TCP CUBIC's window follows time: ρ(u) = ρw·(1 + c·(u/U − 1)³), ρw = T/lw,
-- c = 1 − β. A cut sets u to 0: the rate drops to β·ρw; it climbs back fast,
-- flattens out near ρw, where the upstream refused before, then, with no
-- refusal, climbs ever faster (probing) up to the ceiling. u counts calls,
-- not time: a fleet learns as fast as its calls tell it, whatever the rate.
-- ARGV[1] 'cut' or 'grow'; ARGV[2] T, the ceiling's interval; ARGV[3] tau,
-- its burst tolerance; ARGV[4] how far ahead of now a field may lie before
-- it counts as corrupt; ARGV[5] the longest learned interval (the floor of
-- the rate); ARGV[6] β, the share of the rate a cut keeps; ARGV[7] U, the
-- calls accepted that bring the rate back to where it was cut; ARGV[8] the
-- learned intervals that count as one call accepted, when nothing is
-- refused (the drift back to probing).
-- cut: a 429 that states no wait. ARGV[9] the slot the refused call was
-- booked for, or 0 when unknown; ARGV[10] the least time between cuts for
-- refusals of unknown slot; ARGV[11] '1' to announce with SPUBLISH (Redis
-- Cluster), else PUBLISH. A 429 for a call booked before the latest respace
-- (field rs, which a cut sets) is old news: the calls already on their way
-- at the cut are refused together, and they tell nothing of the new rate.
-- So a cut comes once per episode, however many servers saw a 429. The
-- cut stretches the fleet's schedule in place, as pause.lua does after an
-- overshoot: a slot booked at s > now moves to now + T + (s − now)·k, k the
-- new interval over the old (in millionths), announced on the channel
-- KEYS[1] as "pause respaced-at k lt": every server's sleeping Waits move
-- their own slots, no round trip.
-- grow: calls the upstream accepted. ARGV[9] how many, counted by one
-- server since its last report: they count only while the fleet paces at
-- the learned rate (tat is not in the past: demand meets the rate).
-- Returns {1 if the rate was cut, else 0, the learned interval before, the
-- learned interval now (T at the ceiling), the instant of the respace or 0,
-- k in millionths or 0, the end of the pause in force or 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, tau, ahead, floor = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local beta, U, credit = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local function f(x) return string.format('%d', x) end
local v = redis.call('HMGET', KEYS[1], 'lt', 'lw', 'la', 'lu', 'lg', 'rs', 'tat', 'pause')
-- Corrupt fields count as 0, as in wait.lua; an interval outside
-- [T, floor] as the ceiling's.
local function valid(x)
  x = tonumber(x)
  if x == nil or x ~= x or x < 0 or x > now + ahead then return 0 end
  return x
end
local function interval(x)
  x = valid(x)
  if x < T or x > floor then return T end
  return x
end
local lt, lw, la, lu, lg = interval(v[1]), interval(v[2]), valid(v[3]), valid(v[4]), valid(v[5])
local rs, tat, pause = valid(v[6]), valid(v[7]), valid(v[8])
if lg > now then lg = now end
if pause <= now then pause = 0 end

-- keep saves the learned fields (name, value pairs) with le: until the
-- credit for time alone would bring the rate back to the ceiling, when
-- forgetting it changes nothing. Never shortens the key's life.
local function keep(a, u, w, l)
  local rw = T / w
  local uc = U * (1 + ((1 / rw - 1) / (1 - beta)) ^ (1 / 3))
  local life = math.min(math.max(uc - u, 0) * credit * l, 30 * 86400 * 1000000)
  a[#a + 1], a[#a + 2] = 'le', f(now + life)
  redis.call('HSET', KEYS[1], unpack(a))
  local ms = math.ceil(life / 1000) + 1000
  if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], f(ms)) end
end

if ARGV[1] == 'grow' then
  if lt <= T then return {0, T, T, 0, 0, pause} end
  local u = lu
  if tat >= now then u = u + tonumber(ARGV[9]) end
  if lg > 0 then u = u + (now - lg) / (credit * lt) end
  local rho = (T / lw) * (1 + (1 - beta) * (u / U - 1) ^ 3)
  local nt = math.min(floor, math.max(T, math.ceil(T / rho)))
  keep({'lt', f(nt), 'lu', string.format('%.3f', u), 'lg', f(now)}, u, lw, lt)
  return {0, lt, nt, 0, 0, pause}
end

-- cut
local slot = tonumber(ARGV[9]) or 0
if (slot > 0 and slot < rs) or (slot <= 0 and now - la < math.max(tonumber(ARGV[10]), 2 * lt)) then
  return {0, lt, lt, 0, 0, pause}
end
local nt = math.min(floor, math.ceil(lt / beta))
local k = math.ceil(nt * 1000000 / lt)
-- The next free slot moves as the booked ones do; the burst tolerance
-- scales with the interval, as wait.lua reads it.
local a = {'lt', f(nt), 'lw', f(lt), 'la', f(now), 'lu', '0', 'lg', f(now), 'rs', f(now)}
local nxt = tat - math.floor(tau * lt / T)
if nxt > now then
  nxt = now + T + math.ceil((nxt - now) * k / 1000000)
  a[#a + 1], a[#a + 2] = 'tat', f(nxt + math.floor(tau * nt / T))
end
keep(a, 0, lt, nt)
local msg = f(pause) .. ' ' .. f(now) .. ' ' .. f(k) .. ' ' .. f(nt)
if ARGV[11] == '1' then
  redis.call('SPUBLISH', KEYS[1], msg)
else
  redis.call('PUBLISH', KEYS[1], msg)
end
return {1, lt, nt, now, k, pause}
