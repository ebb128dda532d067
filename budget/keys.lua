-- Pick the key of a pool (Options.Keys) that a booking goes on: the live
-- key of the caller's whose summary in the index is the lowest (see
-- keyfield.lua): the one whose slot comes first, and among the keys free
-- now, the one with the most room. wait.lua then books it, in the same
-- script: one round trip, and one short read of the index whatever the
-- pool's size.
-- KEYS[1] the budget's hash P{name}:budget (its 'pause' holds for every
-- key); KEYS[2] the index P{name}:budget:keys, a ZSET of the live keys'
-- ids by their summary, and '#' scored minus its generation (µs of the
-- Redis clock: when it was made, or a key last removed); KEYS[3]
-- P{name}:budget:removed, a hash of the ids of the keys removed from the
-- pool (Budget.Remove, a 401), each with when (µs of the Redis clock). The
-- key picked is booked in its hash, KEYS[1] .. ':k:' .. ID: the same hash
-- tag, the same Redis Cluster slot (the pool's keys are not all declared:
-- twenty long names would cost every booking more than the rest of the
-- pick).
-- The last ARGV are this block's, taken off before the summary's (see
-- keyfield.lua) and wait.lua's own: the ids of the keys the caller may
-- book, in the caller's order, each followed by a space; the ids of the
-- keys the caller knows were removed, the same way, or ''; how long a
-- removal is kept (ms); for each key the caller may book whose latest tat
-- it set or learned lies ahead of the Redis clock, ',K:TAT:RS' (K its
-- place, 1-based; RS the latest respace of it the caller heard of), the
-- others left out (see wait.lua's ARGV[10]); the index's generation the
-- caller last saw, or 0; and the key (1-based) whose place in the
-- background line the caller comes back to, or 0.
-- A caller that has not seen the index's generation announces its keys
-- first: those not removed join the index (each with its summary, from its
-- hash; a key never booked is free), the removed
-- ones are reported, and a removal Redis lost (a restart without
-- persistence, FLUSHALL) that the caller knows of is written back: a
-- removed key stays removed. A new index gets a new generation.
-- Returns {reply, key, gone, generation}: wait.lua's reply for the key
-- picked (1-based, in the caller's order), and the keys of the caller's
-- found removed when announcing; with no key left, {{5, 0}, 0, gone,
-- generation}. A concurrency cap per key (keys_conc.lua) may stop the
-- booking before the pick (kgate), leave keys out of it (kroom), and
-- answer when none is left (kfull).
local kb = kcut(6)
local kcands, krms, kkeep, kmem = kb[1], kb[2], kb[3], kb[4]
local kgen, kplace = tonumber(kb[5]), tonumber(kb[6])
kargs()
kzset = KEYS[2]
local kn = #kcands / 17
local function kat(s, i) return string.sub(s, (i - 1) * 17 + 1, (i - 1) * 17 + 16) end

local ktop = redis.call('ZRANGE', kzset, 0, 3, 'WITHSCORES')
local gen = 0
if ktop[1] == '#' then gen = -tonumber(ktop[2]) end
local kgone = {}
if gen == 0 or gen ~= kgen then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local ids, rms = {}, {}
  for i = 1, kn do ids[i] = kat(kcands, i) end
  for i = 1, #krms / 17 do rms[i] = kat(krms, i) end
  local all = {}
  for i = 1, kn do all[i] = ids[i] end
  for i = 1, #rms do all[kn + i] = rms[i] end
  local tomb = redis.call('HMGET', KEYS[3], unpack(all))
  local add, back = {}, {}
  for i = 1, kn do
    if tomb[i] then
      kgone[#kgone + 1] = i
    else
      -- A key whose hash outlived the index (a pause longer than its
      -- idle hour) joins it with its own summary, not as free.
      add[#add + 1], add[#add + 2] = kscore(kmain .. ':k:' .. ids[i], now), ids[i]
    end
  end
  for i = 1, #rms do
    if not tomb[kn + i] then back[#back + 1], back[#back + 2] = rms[i], string.format('%d', now) end
  end
  if #back > 0 then
    redis.call('HSET', KEYS[3], unpack(back))
    redis.call('PEXPIRE', KEYS[3], kkeep)
  end
  if #rms > 0 then redis.call('ZREM', kzset, unpack(rms)) end
  if gen == 0 then
    gen = now
    add[#add + 1], add[#add + 2] = string.format('%d', -gen), '#'
  end
  if #add > 0 then redis.call('ZADD', kzset, 'NX', unpack(add)) end
  if gen == now then redis.call('PEXPIRE', kzset, kidle) end
  ktop = redis.call('ZRANGE', kzset, 0, 3, 'WITHSCORES')
end

-- scan returns the caller's key (1-based) first in r, an index range with
-- scores, or 0.
local function scan(r)
  for j = 1, #r, 2 do
    if r[j] ~= '#' and kroom(r[j]) then
      local p = string.find(kcands, r[j], 1, true)
      if p then return (p - 1) / 17 + 1 end
    end
  end
  return 0
end
local kg = kgate(kgone, gen)
if kg then return kg end
local kidx = 0
if kplace > 0 and redis.call('ZSCORE', kzset, kat(kcands, kplace)) and kroom(kat(kcands, kplace)) then
  -- A background caller coming back keeps its place, on its key.
  kidx = kplace
end
if kidx == 0 then kidx = scan(ktop) end
if kidx == 0 and #ktop == 8 then kidx = scan(redis.call('ZRANGE', kzset, 0, -1, 'WITHSCORES')) end
if kidx == 0 then return kfull(kgone, gen, kcands) end

kuse(kat(kcands, kidx), kmain .. ':k:' .. kat(kcands, kidx))
-- The budget's pause holds for every key.
local gp = tonumber(redis.call('HGET', kmain, 'pause'))
if gp then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if gp > now and gp > (tonumber(redis.call('HGET', KEYS[1], 'pause')) or 0) then
    redis.call('HSET', KEYS[1], 'pause', string.format('%d', gp))
    if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], math.ceil((gp - now) / 1000) + 1000) end
  end
end
local kmine, kknown = string.match(kmem, ',' .. kidx .. ':(%d+):(%d+)')
ARGV[10], ARGV[11] = kmine or '0', kknown or '0'
