-- A key's fields (Options.Keys). This block is put before wait.lua,
-- pause.lua, cap.lua and giveback.lua (see keys.go), which then run, inside
-- a function, with kredis in place of redis: every field they read or write
-- in the budget's hash KEYS[1] is the key's, named 'k:ID:' and the field
-- (tat, pause, cap, a1, m:tokens:0, ...), so that each key of a pool is a
-- whole budget of its own in the same hash, and one script books it
-- atomically in one Redis Cluster slot. Those scripts run unchanged.
-- Three things differ from a budget of one key:
--   'lim' stays the budget's: the limit every server books with is one;
--   reading 'pause' reads the later of the key's pause and the budget's
--   own ('pause' unprefixed: Budget.PauseUntil pauses every key);
--   PEXPIRE only lengthens the hash's life: another key's fields may lie
--   further ahead than this key's;
--   a message published on the budget's channel starts 'k ID ': it is of
--   this key only.
-- kid and kp (the key's id, and 'k:' .. kid .. ':') are set before the
-- script runs.
local kraw = redis
local kid, kp = '', ''
local function kname(f)
  if f == 'lim' then return f end
  return kp .. f
end
-- kmax is the later of two instants as the hash holds them (false when
-- missing; a value that is not a number loses to one that is).
local function kmax(a, b)
  local x, y = tonumber(a), tonumber(b)
  if x == nil then return b end
  if y == nil or x >= y then return a end
  return b
end
local kredis = {call = function(cmd, ...)
  local a = {...}
  local key = table.remove(a, 1)
  if key == nil or key ~= KEYS[1] then return kraw.call(cmd, ...) end
  if cmd == 'HMGET' then
    local fs, pi = {}, nil
    for i, f in ipairs(a) do
      fs[i] = kname(f)
      if f == 'pause' then pi = i end
    end
    if pi then fs[#fs + 1] = 'pause' end
    local v = kraw.call('HMGET', key, unpack(fs))
    if pi then
      v[pi] = kmax(v[pi], v[#fs])
      v[#fs] = nil
    end
    return v
  elseif cmd == 'HGET' then
    if a[1] == 'pause' then
      local v = kraw.call('HMGET', key, kp .. 'pause', 'pause')
      return kmax(v[1], v[2])
    end
    return kraw.call('HGET', key, kname(a[1]))
  elseif cmd == 'HSET' then
    for i = 1, #a, 2 do a[i] = kname(a[i]) end
    return kraw.call('HSET', key, unpack(a))
  elseif cmd == 'PEXPIRE' then
    local ttl = kraw.call('PTTL', key)
    if ttl >= 0 and ttl >= tonumber(a[1]) then return 1 end
    return kraw.call('PEXPIRE', key, a[1])
  elseif cmd == 'PUBLISH' or cmd == 'SPUBLISH' then
    return kraw.call(cmd, key, 'k ' .. kid .. ' ' .. a[1])
  end
  return kraw.call(cmd, ...)
end}
