-- A key of a pool (Options.Keys). Each key is a budget of its own: the hash
-- P{name}:budget:k:ID, with the fields of a budget's hash (see wait.lua),
-- beside the budget's hash under the same hash tag, in the same Redis
-- Cluster slot. wait.lua, giveback.lua, cap.lua and pause.lua run unchanged
-- on it, after this block (see keys.go): KEYS[1] is made the key's hash
-- (kuse). What differs from a budget of one key:
--   a message pause.lua publishes goes on the budget's channel, and starts
--   'k ID ': it is of this key only (kredis, in place of redis);
--   after a booking, or a pause, cap or give-back, ksum writes the key's
--   summary in the pool's index P{name}:budget:keys, a ZSET of the live
--   keys' ids: the earliest instant one unit of every dimension of the key
--   could go (its tat less its tolerance in each dimension, its own pause,
--   a cap with nothing left before its reset). A booking picks the key of
--   the lowest (keys.lua): the one whose slot comes first, and among the
--   keys free now, the one with the most room. The index lives an hour
--   from when it was made (kidle): then every server's keys join a new
--   one, at their next booking, each with the summary of its hash (see
--   keys.lua).
-- The budget's own pause ('pause' in its hash: Budget.PauseUntil) holds
-- for every key: a booking copies it to the key it picks (keys.lua).
-- The summary's arguments are the last ARGV, taken off before the script's
-- own (kargs): the tau of the limit on calls (µs); for each extra
-- dimension, the field of its tat, its tau (µs) and the field of its cap or
-- ''; and their number. A script of one key (not a booking) has its KEYS
-- the budget's hash, the key's hash and the index, and the key's id after
-- the summary's arguments (kone).
local kraw = redis
local kmain, kzset, kid = KEYS[1], nil, ''
local ktau, kdims = 0, {}
local kidle = 3600000
-- knames are the fields a summary is computed from.
local knames = {'tat', 'pause', 'cap', 'capat'}
-- kcut takes the last n values off ARGV and returns them, in order.
local function kcut(n)
  local t, base = {}, #ARGV - n
  for i = 1, n do
    t[i] = ARGV[base + i]
    ARGV[base + i] = nil
  end
  return t
end
-- kargs takes the summary's arguments off ARGV.
local function kargs()
  local n = tonumber(kcut(1)[1])
  local a = kcut(3 * n + 1)
  ktau = tonumber(a[1])
  for i = 1, n do
    local d = {a[3 * i - 1], tonumber(a[3 * i]), a[3 * i + 1], a[3 * i + 1] .. 'at'}
    kdims[i] = d
    knames[#knames + 1] = d[1]
    if d[3] ~= '' then knames[#knames + 1], knames[#knames + 2] = d[3], d[4] end
  end
end
-- kuse makes the key of id, whose hash is key, the one the script is of.
local function kuse(id, key)
  kid = id
  KEYS[1] = key
end
-- kone takes the key of a script of one key off its KEYS and ARGV.
local function kone()
  local id = kcut(1)[1]
  kargs()
  kzset = KEYS[3]
  kuse(id, KEYS[2])
end

-- What a concurrency cap per key (keys_conc.lua) changes in a booking
-- (keys.lua): whether a key of id has room for the caller; a reply given
-- before the pick, or nil; and the reply when no key of the caller's, those
-- of cands (see keys.lua), has room.
local kroom = function(id) return true end
local kgate = function(gone, gen) return nil end
local kfull = function(gone, gen, cands) return {{5, 0}, 0, gone, gen} end

local kredis = {call = function(cmd, key, ...)
  if key == nil then return kraw.call(cmd) end
  if (cmd == 'PUBLISH' or cmd == 'SPUBLISH') and key == KEYS[1] then
    return kraw.call(cmd, kmain, 'k ' .. kid .. ' ' .. (...))
  end
  return kraw.call(cmd, key, ...)
end}

-- kscore returns the summary of the key whose hash is key (see above), at
-- now (µs of the Redis clock).
local function kscore(key, now)
  local v = kraw.call('HMGET', key, unpack(knames))
  -- Corrupt fields count as 0, as in wait.lua (ten years: maxAhead).
  local function n(i)
    local x = tonumber(v[i])
    if x == nil or x ~= x or x < 0 or x > now + 315360000000000 then return 0 end
    return x
  end
  local e = math.max(n(1) - ktau, n(2))
  if n(3) < 1 and n(4) > now then e = math.max(e, n(4)) end
  local j = 5
  for _, d in ipairs(kdims) do
    e = math.max(e, n(j) - d[2])
    j = j + 1
    if d[3] ~= '' then
      if n(j) < 1 and n(j + 1) > now then e = math.max(e, n(j + 1)) end
      j = j + 2
    end
  end
  return string.format('%d', math.max(e, 0))
end

-- ksum writes the key's summary in the index (see above), when the key is
-- in it (a removed key is not). now is the Redis clock (µs), or nil to read
-- it.
local function ksum(now)
  if not now then
    local t = kraw.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  kraw.call('ZADD', kzset, 'XX', kscore(KEYS[1], now), kid)
end
