-- Read a cached value, or claim the right to load it: the fill algorithm's
-- first round trip.
-- KEYS[1] the lock P{K}; KEYS[2] the value P{K}:value;
-- KEYS[3] the failure marker P{K}:failed; KEYS[4] the back-off P{K}:backoff;
-- KEYS[5] the last stamp issued for the key, P{K}:stamp (see stamp below);
-- KEYS[6], on a plain Redis, the fleet's local-tier flag P:local (see
--   local.lua): without it in place, no local tier orders entries by their
--   stamps, and the stamp is the clock alone; under it, stamps are later
--   than the flag's placement (its value), so than every stamp without it.
-- ARGV[1] the caller's token; ARGV[2] the lease in ms;
-- ARGV[3] the mode: 'r' read, else claim; 'c' claim without reading (the
--   value could not be decoded); 'e' claim an early refresh, unless failed
--   refreshes are backing off;
-- ARGV[4] the token of the holder the caller waited for, or '': if that
--   holder failed, or gave its waiters a value it did not store, that
--   outcome is returned instead of a claim; in mode 'e', the value's PTTL
--   in ms when the caller read it, or '';
-- ARGV[5], ARGV[6] the caller's stale-while-revalidate and stale-if-error
--   windows in ms: how far past its TTL a value may still be served;
-- ARGV[7] '1' when the caller wants a fresh value's PTTL (for an
--   in-process copy), '2' its PTTL and the server's clock (for an early
--   refresh), else a fresh value without a stale window comes alone.
-- Returns
--   value                             a fresh value without a stale window
--   {2, value, pttl}                  a fresh value; pttl the key's, in ms
--   {2, value, pttl, now}             the same with ARGV[7] '2'; now the
--                                     server's clock, in ms
--   {3, value, pttl, 1, stamp}        a stale value, and its refresh claimed
--   {3, value, pttl, 0, holder}       a stale value, refreshed by holder
--   {3, value, pttl, 2}               a stale value, refreshes backing off
--   {1, stamp, bare}                  claimed; stamp is the entry's, in ms;
--                                     bare 1 when the read found no value
--                                     (nor, then, a refreshes' back-off)
--   {0, pttl, holder}                 held by holder for pttl more ms
--   {4, message}                      the awaited holder's outcome, a message
-- A value's stale window is read from its entry's fixed place (bytes 4-7
-- of a format 2 entry, see internal/envelope): the key lives TTL + window,
-- so the value is stale once its PTTL is at most the window.
--
-- The common case first, before anything else is set up: a fresh value
-- without a stale window, its PTTL not wanted, comes back alone.
local mode = ARGV[3]
local v
if mode == 'r' then
  v = redis.call('GET', KEYS[2])
  if v and ARGV[7] ~= '1' and ARGV[7] ~= '2' and not (#v >= 7 and string.byte(v, 1) == 193 and string.byte(v, 2) == 2
      and string.sub(v, 4, 7) ~= '\0\0\0\0') then
    return v
  end
end

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- stamp issues the stamp of the entry being claimed: the server's clock in
-- ms, made later than the last stamp issued for the key (by a claim or a
-- delete.lua), so that one key's entries and deletes are ordered exactly,
-- even within one millisecond, wherever a local tier reads them. The last
-- stamp is kept a second: by then
-- the clock has passed it, and orders alone. Neither reading nor keeping
-- it may fail the claim (out of memory, a foreign key): the clock alone
-- orders then.
local function stamp()
  local s = now()
  if KEYS[6] then
    local ok, f = pcall(redis.call, 'GET', KEYS[6])
    if ok and not f then return s end
    local placed = ok and tonumber(string.match(f, '^(%d+)'))
    if placed and s <= placed then s = placed + 1 end
  end
  local ok, last = pcall(redis.call, 'GET', KEYS[5])
  last = ok and last and tonumber(last)
  if last and s <= last then s = last + 1 end
  pcall(redis.call, 'SET', KEYS[5], s, 'PX', 1000)
  return s
end

local function backingOff()
  local b = redis.call('GET', KEYS[4])
  if not b then return false end
  local untilMs = tonumber(string.match(b, '^(%d+)'))
  return untilMs ~= nil and untilMs > now()
end

-- claim takes the lock, or reports who holds it. GET, not EXISTS: a key of
-- another type raises WRONGTYPE instead of looking like a held lock.
local function claim()
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return true end
  local holder = redis.call('GET', KEYS[1])
  if holder == ARGV[1] then
    -- Ours already: a retry of a call whose reply was lost.
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return true
  end
  return false, holder
end

if mode == 'e' then
  -- A PTTL longer than the caller read (a PTTL only shrinks), or none:
  -- the value was stored again, or deleted, since: nothing to refresh.
  local seen = tonumber(ARGV[4])
  if seen then
    local p = redis.call('PTTL', KEYS[2])
    if p < 0 or p > seen then return {0, 0, ''} end
  end
  if not backingOff() and claim() then return {1, stamp(), 0} end
  return {0, 0, ''}
end
if mode == 'r' then
  if v then
    local w = 0
    if #v >= 7 and string.byte(v, 1) == 193 and string.byte(v, 2) == 2 then
      local a, b, c, d = string.byte(v, 4, 7)
      w = ((a * 256 + b) * 256 + c) * 256 + d
    end
    local pttl = redis.call('PTTL', KEYS[2])
    if w == 0 or pttl < 0 or pttl > w then
      if ARGV[7] == '2' then return {2, v, pttl, now()} end
      return {2, v, pttl}
    end
    local age = w - pttl
    if age <= tonumber(ARGV[5]) or age <= tonumber(ARGV[6]) then
      if backingOff() then return {3, v, pttl, 2} end
      local ok, holder = claim()
      if ok then return {3, v, pttl, 1, stamp()} end
      return {3, v, pttl, 0, holder}
    end
    -- Older than this caller serves: a miss.
  end
end
if ARGV[4] ~= '' then
  local f = redis.call('GET', KEYS[3])
  if f and string.sub(f, 1, #ARGV[4] + 1) == ARGV[4] .. ' ' then
    return {4, string.sub(f, #ARGV[4] + 2)}
  end
end
local ok, holder = claim()
if ok then
  local bare = 0
  if mode == 'r' and not v then bare = 1 end
  return {1, stamp(), bare}
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then
  return redis.error_reply('LOCKSMITH ' .. KEYS[1] .. ' has no expiry: not a locksmith lock')
end
return {0, pttl, holder}
