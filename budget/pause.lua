-- Pause a budget for the whole fleet, or take a 429 for an overshoot.
-- KEYS[1] the budget hash P{name}:budget (fields: see wait.lua); its name is
-- also the channel the pause is announced on.
-- ARGV[1] pause: no call before now + ARGV[1] µs, or -1 for no pause.
-- ARGV[2] T; ARGV[3] tau (µs); ARGV[4] '1' to announce with SPUBLISH (Redis
-- Cluster), else PUBLISH; ARGV[5] how far ahead of now a field may lie before
-- it counts as corrupt (µs).
-- ARGV[6] '1' when the pause is for a 429 that may be an overshoot; ARGV[7]
-- Per and ARGV[8] the most slack (µs); ARGV[9] the overshoots within one Per
-- that make a storm; ARGV[10] the slack's half-life (µs): it halves for
-- every such span since the latest overshoot; ARGV[11] the first slack (µs);
-- ARGV[12] the slot the refused call was booked for, or 0 when unknown.
-- A 429 for a call booked before the latest respace (field rs) is old news
-- of the old schedule: calls already on their way when it was respaced
-- (the upstream answers each a latency later) are refused together, and
-- they tell nothing of the new spacing: it is taken as the same overshoot
-- again.
-- A 429 that asks for no more than an interval (or for the whole second a
-- Retry-After rounds up to), when no longer pause is in force, is most often
-- an overshoot of a budget that paces at its limit: arrival jitter brought a
-- call to the upstream a little early. It does not pause the fleet for
-- Retry-After: the slack between paced slots (field slack, read by wait.lua)
-- grows (doubling, from ARGV[11] to the most), the fleet pauses for one
-- interval (or Retry-After if shorter), and the schedule is stretched in
-- place by k, the new spacing over the old (below), announced as "end
-- respaced-at k" (the instant also kept in field rs): every Wait sleeping on
-- a slot booked before then moves its slot itself, without a round trip
-- (one that did not hear k books again). The same 429 reported twice (Observe,
-- then PauseFor) within T/2 counts once. Only when the slack is already the
-- most and ARGV[9] overshoots came within one Per (fields ow, the window's
-- start, and on, the count) is it a storm: the fleet pauses for ARGV[1].
-- When the pause grows, its end (µs of the Redis clock) is published on the
-- channel KEYS[1].
-- Returns {end of the pause in force (µs of the Redis clock), or 0 for none,
-- 1 if the pause grew, 0, what a 429 was: 0 not one, 1 an overshoot, 2 the
-- same overshoot again, 3 a storm, the instant the schedule was respaced or
-- 0, and k in millionths or 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pauseFor, T, tau, ahead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local function f(x) return string.format('%d', x) end
local function field(name)
  local x = tonumber(redis.call('HGET', KEYS[1], name))
  -- Corrupt fields count as 0, as in wait.lua.
  if x == nil or x ~= x or x < 0 or x > now + ahead then return 0 end
  return x
end

local pause, grew = field('pause'), 0
local last = 0
local over, respaced, rk = 0, nil, nil
if ARGV[6] == '1' and pauseFor >= 0 and pause <= now + T then
  local per, most, storm = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local slack, o1, ow, on = field('slack'), field('o1'), field('ow'), field('on')
  local slot = tonumber(ARGV[12]) or 0
  if (o1 > 0 and now - o1 < T / 2) or (slot > 0 and slot < field('rs')) then
    over, pauseFor = 2, -1
  else
    -- Overshoots are counted in windows of one Per.
    if now - ow >= per then ow, on = now, 0 end
    on = on + 1
    redis.call('HSET', KEYS[1], 'o1', f(now), 'ow', f(ow), 'on', f(on))
    if slack >= most and on >= storm then
      over = 3
    else
      over, pauseFor, respaced = 1, math.min(pauseFor, T), now
      -- The slack learned before, less its decay since the latest
      -- overshoot (as wait.lua reads it), doubles, from the first slack
      -- to the most.
      local decay = tonumber(ARGV[10])
      if slack > 0 and o1 > 0 and decay > 0 then
        slack = math.floor(slack / 2 ^ math.min(60, math.floor(math.max(0, now - o1) / decay)))
      end
      local old = math.min(slack, T)
      slack = math.min(most, math.max(tonumber(ARGV[11]), 2 * slack))
      -- The schedule is stretched in place: a slot booked at s > now moves
      -- to now + T + (s - now) * k, k the new spacing over the old, in
      -- millionths (rounded up). Every server's sleeping Waits move their
      -- own slots so when they hear k with the respace (no round trip),
      -- and the next free slot, tat - tau, moves the same way: the order
      -- of the slots stays, and they lie at least the new spacing apart.
      local k = math.ceil((T + math.min(slack, T)) * 1000000 / (T + old))
      local nxt = field('tat') - tau
      if nxt > now then
        nxt = now + T + math.ceil((nxt - now) * k / 1000000)
      else
        nxt = now + T
      end
      redis.call('HSET', KEYS[1], 'slack', f(slack), 'tat', f(nxt + tau), 'rs', f(now))
      last = nxt + tau
      rk = k
    end
  end
end
if pauseFor >= 0 and (now + pauseFor > pause or respaced) then
  pause, grew = math.max(pause, now + pauseFor), 1
  redis.call('HSET', KEYS[1], 'pause', f(pause))
  local msg = f(pause)
  if respaced then msg = msg .. ' ' .. f(respaced) .. ' ' .. f(rk) end
  if ARGV[4] == '1' then
    redis.call('SPUBLISH', KEYS[1], msg)
  else
    redis.call('PUBLISH', KEYS[1], msg)
  end
end
last = math.max(last, pause)
if grew == 1 or over == 1 then
  -- Never shorten the life the key already has.
  local ms = math.ceil((last - now) / 1000) + 1000
  if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], f(ms)) end
end
if pause <= now then pause = 0 end
return {pause, grew, 0, over, respaced or 0, rk or 0}
