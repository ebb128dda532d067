-- Book the slot of one call in a budget: GCRA on the Redis clock, behind any
-- pause, with background calls held to a horizon and, while a foreground call
-- waits, to a share of the rate.
-- KEYS[1] the budget, a hash P{name}:budget. Its fields are instants of the
-- Redis clock in microseconds:
--   tat    theoretical arrival time: the next call goes at tat - tau or later
--   pause  no call goes before it
--   fg     the latest slot booked by a foreground call
--   btat   no background call goes before it while foreground calls wait
--   bq     the end of the background line: where the next background caller
--          told to come back is placed
--   sb     the slot a background caller held back by the share gate stands
--          by for
--   lim    the limits of the latest booking, 'T:tau' then ' FIELD=T:tau'
--          for each extra dimension: servers that book with other limits
--          are told so (written only when it changes)
--   cap    the calls still allowed before capat, the upstream's reset (set
--   capat  by cap.lua): a slot booked before capat spends one; with none
--          left, the slot is capat
--   slack  µs added to T between paced slots, learned from 429s (pause.lua)
--   rs     when the schedule was last respaced after an overshoot (pause.lua)
--          or a cut of the learned rate (adaptive.lua)
--   lt, le the learned interval and the end of what was learned, with
--          Options.Adaptive (adaptive.lua, which lists its other fields)
-- and one tat per extra dimension (Options.Also and Options.Meters), each a
-- GCRA of its own on the same slots:
--   a1, a2, ...          the tat of each further limit on calls (Also)
--   m:NAME:0, m:NAME:1   the tat of each limit of the meter NAME (tokens...)
--   m:NAME:cap           the units of meter NAME still allowed before
--   m:NAME:capat         m:NAME:capat, the upstream's reset (cap.lua), as
--                        cap and capat are for calls
-- ARGV[1] T, the emission interval; ARGV[2] tau, the burst tolerance;
-- ARGV[3] '1' for a background call, else foreground; ARGV[4] the caller's
-- patience (time to its deadline), or -1 for none; ARGV[5] the background
-- interval while a foreground call waits (T / share); ARGV[6] the horizon: the
-- furthest ahead of now a background call books; ARGV[7] the background
-- caller's place in the line when it comes back, else 0; ARGV[8] how far
-- ahead of now a field may lie before it counts as corrupt. All in µs.
-- ARGV[9] the caller's limits, as field lim.
-- ARGV[10] the latest tat the caller set or learned, µs of the Redis clock,
-- or 0: Redis may have lost what it held (a restart without persistence,
-- FLUSHALL, a failover to a replica behind), and the greater of the two
-- holds. ARGV[11] the latest respace of the schedule the caller has heard of
-- (field rs), or 0. ARGV[12] the slack's half-life (µs; see pause.lua).
-- ARGV[13] the calls this booking is for (default 1), c: its slot is at
-- least tat - tau + (min(c, burst) - 1)·T and it moves tat by c·(T + slack):
-- a token bucket of Burst calls, that a cost above the burst overdraws.
-- ARGV[14...] the extra dimensions, five values each: the field of its tat,
-- its T and tau (µs per unit), the units this booking takes (more than 0),
-- and the field of the meter's cap ('m:NAME:cap', capat being that name and
-- 'at'), or '' for none. Each is the same token bucket as the calls': the
-- slot is at least tat_d - tau_d + (min(c_d, burst_d) - 1)·T_d, the booking
-- sets tat_d = max(tat_d, slot) + c_d·T_d. Every dimension is booked for
-- the one slot, the latest any of them allows, or none is.
-- Returns
--   {0, wait, slot, tat, gated, other[, tats]}
--                         booked: the call goes at slot, wait µs from now;
--                         tat is the value this booking set; gated is 1 when
--                         a background call passed the share gate; other is
--                         the limit the previous booking was made with when
--                         it differs from the caller's, else 0; tats, with
--                         extra dimensions only (or a cost of more than one
--                         call), the tat before this booking, then for each
--                         extra dimension in ARGV's order the tat this
--                         booking set and the one before it
--   {1, wait}             refused: the earliest slot lies wait µs away, past
--                         the caller's patience; nothing is booked
--   {2, wait, place}      a background caller comes back after wait µs,
--                         at its place in the line (0 for none); no slot is
--                         booked
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, tau = tonumber(ARGV[1]), tonumber(ARGV[2])
local bg, patience = ARGV[3] == '1', tonumber(ARGV[4])
local Tb, H, place, ahead = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

local lim = ARGV[9]
-- One HMGET reads every field: the calls', the learned interval's (lt, le:
-- see below), then each extra dimension's tat, and its cap and capat when
-- it has a cap.
local names = {'tat', 'pause', 'fg', 'btat', 'bq', 'sb', 'lim', 'capat', 'cap', 'slack', 'rs', 'o1', 'lt', 'le'}
for i = 14, #ARGV - 4, 5 do
  names[#names + 1] = ARGV[i]
  if ARGV[i + 4] ~= '' then names[#names + 1], names[#names + 2] = ARGV[i + 4], ARGV[i + 4] .. 'at' end
end
local v = redis.call('HMGET', KEYS[1], unpack(names))
local other = 0
if v[7] and v[7] ~= lim then other = v[7] end
-- A field that is missing, not a number, or implausible counts as 0: a
-- corrupt budget starts afresh instead of failing or blocking its callers.
local function valid(x)
  x = tonumber(x)
  if x == nil or x ~= x or x < 0 or x > now + ahead then return 0 end
  return x
end
local function field(i) return valid(v[i]) end
-- Options.Adaptive (adaptive.lua): the fleet's learned interval lt, when
-- longer than T, paces the calls instead (the burst tolerance and the
-- background interval in proportion); the key outlives le, the end of what
-- was learned.
local lt, le = tonumber(v[13]), valid(v[14])
if lt and lt > T and lt <= ahead then
  tau, Tb, T = math.floor(tau * lt / T), math.floor(Tb * lt / T), lt
end
local tat, pause, fg, btat, bq, sb = field(1), field(2), field(3), field(4), field(5), field(6)
local capat, left = field(8), field(9)
-- The caller's memory stands in for a tat Redis lost, unless the schedule
-- was respaced (field rs, set by pause.lua) after the caller last heard of
-- it: then its memory is of the old schedule, which the respace replaced.
local mine, known = tonumber(ARGV[10]), tonumber(ARGV[11]) or 0
if mine and mine > tat and mine <= now + ahead and field(11) <= known then tat = mine end
-- Paced slots lie T + slack apart; a burst after a quiet spell is unchanged.
-- The slack halves for every ARGV[12] µs since the latest overshoot (field
-- o1), so a fleet whose jitter passed goes back to its full rate.
local decay = tonumber(ARGV[12]) or 0
local slack = field(10)
if slack > 0 and decay > 0 then
  slack = math.floor(slack / 2 ^ math.min(60, math.floor(math.max(0, now - field(12)) / decay)))
end
local step = T + math.min(slack, T)

local function f(x) return string.format('%d', x) end
-- The key outlives the last instant it holds by a second: once every field
-- lies in the past, a missing key means the same as the fields. save writes
-- the fields a (name, value pairs), last being the latest instant among the
-- values.
local function save(a, last)
  redis.call('HSET', KEYS[1], unpack(a))
  last = math.max(last, tat, pause, fg, btat, bq, capat, le)
  redis.call('PEXPIRE', KEYS[1], f(math.ceil((last - now) / 1000) + 1000))
end

-- A token bucket's earliest slot for c units: tat - tau when c is 1; a
-- cost above the burst goes when the bucket is full, and overdraws it.
local function due(x, T, tau, c)
  return x - tau + (math.min(c, math.floor(tau / T) + 1) - 1) * T
end
local c = tonumber(ARGV[13]) or 1
local slot = math.max(now, due(tat, T, tau, c), pause)
-- The caps: {cap field, capat, units left, units this booking takes}.
local caps = {{'cap', capat, left, c}}
-- The extra dimensions: {field, T, tau, units, tat}.
local dims = {}
local j = 15
for i = 14, #ARGV - 4, 5 do
  local d = {ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), field(j)}
  slot = math.max(slot, due(d[5], d[2], d[3], d[4]))
  if ARGV[i + 4] ~= '' then
    caps[#caps + 1] = {ARGV[i + 4], field(j + 2), field(j + 1), d[4]}
    j = j + 2
  end
  dims[#dims + 1], j = d, j + 1
end
-- Capped: with too few units left before a reset, the slot is the reset.
-- A later slot can meet another cap's reset: look again until none moves it.
local moved = true
while moved do
  moved = false
  for _, k in ipairs(caps) do
    if k[2] > now and slot < k[2] and k[3] < k[4] then slot, moved = k[2], true end
  end
end
-- book saves a booking at slot, with the field given (name, value x): tat,
-- each extra dimension's, and the caps spent by a slot before their reset.
-- It returns the extra dimensions' new tats.
local function book(nt, name, x)
  local a = {'tat', f(nt), name, f(x)}
  if v[7] ~= lim then a[#a + 1], a[#a + 2] = 'lim', lim end
  local last = math.max(nt, x)
  local tats = {tat}
  for _, d in ipairs(dims) do
    -- At most ahead of now (an overdraw of years): further, the field
    -- would read as corrupt, and the budget start afresh.
    local y = math.min(math.max(d[5], slot) + d[4] * d[2], now + ahead)
    a[#a + 1], a[#a + 2] = d[1], f(y)
    tats[#tats + 1], tats[#tats + 2] = y, d[5]
    if y > last then last = y end
  end
  for _, k in ipairs(caps) do
    if k[2] > now and slot < k[2] then a[#a + 1], a[#a + 2] = k[1], f(k[3] - k[4]) end
  end
  save(a, last)
  return tats
end
-- reply is a booking's reply, with the extra dimensions' tats if any.
local function reply(nt, gated, tats)
  if #dims == 0 and c == 1 then return {0, slot - now, slot, nt, gated, other} end
  return {0, slot - now, slot, nt, gated, other, tats}
end

if not bg then
  if patience >= 0 and slot - now > patience then return {1, slot - now} end
  local nt = math.min(math.max(tat, slot) + c * step, now + ahead)
  return reply(nt, 0, book(nt, 'fg', math.max(fg, slot)))
end

-- While foreground calls wait, background calls go at most every Tb. A
-- foreground caller served at its slot books again (or another arrives) an
-- instant later, when background callers coming back at the same slot
-- boundary would otherwise find no foreground booking ahead: foreground
-- demand lasts until one interval after the latest foreground slot. A slot
-- free now is never held back: nobody waits for it, and unused it is lost.
local gated, bslot = 0, now
if fg + T > now and slot > now then gated, bslot = 1, math.max(now, btat) end
local earliest = math.max(slot, bslot)
if patience >= 0 and earliest - now > patience then return {1, earliest - now} end
-- A newcomer queues behind the background callers told to come back; a
-- caller coming back keeps its turn.
local lined = place == 0 and bq > now
-- Held back by the share gate from a slot within the horizon, one caller
-- stands by for it: should no foreground call book it, it is free when due,
-- and the gate does not hold back a free slot. One at a time, so that
-- standing by costs at most one round trip per slot.
if not lined and slot - now <= H and bslot > slot and sb ~= slot then
  save({'sb', f(slot)}, slot)
  return {2, slot - now, place}
end
if lined or slot - now > H or bslot > slot then
  local q = math.max(bq, slot - H, bslot, now)
  if patience >= 0 and q - now > patience then return {1, q - now} end
  save({'bq', f(q + T)}, q + T)
  return {2, q - now, q}
end
local nt = math.min(math.max(tat, slot) + c * step, now + ahead)
return reply(nt, gated, book(nt, 'btat', slot + Tb))
