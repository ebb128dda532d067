-- Pick the key of a pool (Options.Keys) that a booking goes on: the live key
-- whose slot comes first, over every dimension, pause and cap, ties going to
-- the one with the most left. wait.lua then books it (after keyfield.lua;
-- see keys.go), in the same script: one round trip whatever the pool's size.
-- KEYS[1] the budget hash P{name}:budget (fields: see wait.lua; a key's are
-- 'k:ID:' and the field); KEYS[2] P{name}:budget:removed, a hash of the ids
-- of the keys removed from the pool (Budget.Remove, a 401), each with when
-- (µs of the Redis clock).
-- The last ARGV are this block's, taken off before wait.lua's own: for each
-- key the caller may book, its id, the latest tat the caller set or learned
-- of it (or 0) and the latest respace of it the caller heard of (or 0), in
-- the caller's order; then the ids the caller knows were removed; then how
-- long a removal is kept (ms); then the number of keys, the number of
-- removed ids, and the key (1-based) whose place in the background line the
-- caller comes back to, or 0.
-- A removal Redis lost (a restart without persistence, FLUSHALL) that the
-- caller knows of is written back: a removed key stays removed.
-- Returns {reply, key, gone}: wait.lua's reply for the key picked (1-based,
-- in the caller's order), and the keys of the caller's that were removed;
-- with none left, {{5, 0}, 0, gone}.
local kplace = tonumber(table.remove(ARGV))
local krm = tonumber(table.remove(ARGV))
local kn = tonumber(table.remove(ARGV))
local kkeep = table.remove(ARGV)
local kknew = {}
for i = krm, 1, -1 do kknew[i] = table.remove(ARGV) end
local kids, kmine, kheard = {}, {}, {}
for i = kn, 1, -1 do
  kheard[i] = table.remove(ARGV)
  kmine[i] = table.remove(ARGV)
  kids[i] = table.remove(ARGV)
end

local kclock = redis.call('TIME')
local know = tonumber(kclock[1]) * 1000000 + tonumber(kclock[2])
local kq = {}
for i = 1, kn do kq[i] = kids[i] end
for i = 1, krm do kq[kn + i] = kknew[i] end
local ktomb = redis.call('HMGET', KEYS[2], unpack(kq))
local kgone, klive = {}, {}
for i = 1, kn do
  if ktomb[i] then kgone[#kgone + 1] = i else klive[#klive + 1] = i end
end
local kback = {}
for i = 1, krm do
  if not ktomb[kn + i] then
    kback[#kback + 1], kback[#kback + 2] = kknew[i], string.format('%d', know)
  end
end
if #kback > 0 then
  redis.call('HSET', KEYS[2], unpack(kback))
  redis.call('PEXPIRE', KEYS[2], kkeep)
end
if #klive == 0 then return {{5, 0}, 0, kgone} end

local kidx = 0
if kplace > 0 and not ktomb[kplace] then
  -- A background caller coming back keeps its place, on its key.
  kidx = kplace
elseif #klive == 1 then
  kidx = klive[1]
else
  -- The estimate of each live key's slot: wait.lua's, without the
  -- priorities (a background call's horizon and share are the key's own).
  local T, tau, ahead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[8])
  local c = tonumber(ARGV[13]) or 1
  local dims = {}
  for i = 14, #ARGV - 4, 5 do
    dims[#dims + 1] = {ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4]}
  end
  local names = {'pause'}
  for _, i in ipairs(klive) do
    local p = 'k:' .. kids[i] .. ':'
    for _, f in ipairs({'tat', 'pause', 'cap', 'capat', 'rs'}) do names[#names + 1] = p .. f end
    for _, d in ipairs(dims) do
      names[#names + 1] = p .. d[1]
      if d[5] ~= '' then names[#names + 1], names[#names + 2] = p .. d[5], p .. d[5] .. 'at' end
    end
  end
  local v = redis.call('HMGET', KEYS[1], unpack(names))
  local function valid(x)
    x = tonumber(x)
    if x == nil or x ~= x or x < 0 or x > know + ahead then return 0 end
    return x
  end
  local function due(x, T, tau, c)
    return x - tau + (math.min(c, math.floor(tau / T) + 1) - 1) * T
  end
  local gpause = valid(v[1])
  local j = 2
  local bslot, bleft, broom
  for _, i in ipairs(klive) do
    local tat, pause, left, capat, rs = valid(v[j]), valid(v[j + 1]), valid(v[j + 2]), valid(v[j + 3]), valid(v[j + 4])
    j = j + 5
    local mine = tonumber(kmine[i]) or 0
    if mine > tat and mine <= know + ahead and rs <= (tonumber(kheard[i]) or 0) then tat = mine end
    local slot = math.max(know, due(tat, T, tau, c), pause, gpause)
    local caps = {{capat, left, c}}
    for _, d in ipairs(dims) do
      slot = math.max(slot, due(valid(v[j]), d[2], d[3], d[4]))
      j = j + 1
      if d[5] ~= '' then
        caps[#caps + 1] = {valid(v[j + 1]), valid(v[j]), d[4]}
        j = j + 2
      end
    end
    local moved = true
    while moved do
      moved = false
      for _, k in ipairs(caps) do
        if k[1] > know and slot < k[1] and k[2] < k[3] then slot, moved = k[1], true end
      end
    end
    -- What is left: the bookings of this size the upstream's caps still
    -- allow before their reset (no cap: any number), then the calls the
    -- key's bucket holds at the slot.
    local left = math.huge
    for _, k in ipairs(caps) do
      if k[1] > know and slot < k[1] then left = math.min(left, math.floor(k[2] / math.max(k[3], 1))) end
    end
    local room = math.min(tau, slot - tat + tau)
    if kidx == 0 or slot < bslot or slot == bslot and (left > bleft or left == bleft and room > broom) then
      kidx, bslot, bleft, broom = i, slot, left, room
    end
  end
end

ARGV[10], ARGV[11] = kmine[kidx], kheard[kidx]
kid = kids[kidx]
kp = 'k:' .. kid .. ':'
