-- End a fill: store its value or record its failure, release the lock, and
-- tell the waiters, if the lock is still the caller's.
-- KEYS[1] the lock P{K}; KEYS[2] the value P{K}:value;
-- KEYS[3] the failure marker P{K}:failed; KEYS[4] the back-off P{K}:backoff;
-- KEYS[5] the stamp key, passed with the others and not used here;
-- KEYS[6], on a plain Redis, the fleet's local-tier flag P:local (see
--   local.lua): without it in place, no server keeps copies, and a store
--   publishes no invalidation.
-- ARGV[1] the caller's token; ARGV[2] '1' to notify with SPUBLISH (Redis
-- Cluster), else PUBLISH; ARGV[3] 's' to store a value, 'f' for a failure;
-- ARGV[4] the message for the channel P{K}; to store, 'v' alone stands for
-- 'v' followed by the entry (the waiters are given the entry itself).
-- To store: ARGV[5] the entry; ARGV[6] its key's TTL in ms; ARGV[7] the
--   invalidation channel, or '' for none (a Cluster whose fleet keeps no
--   local tier); ARGV[8] the invalidation message; ARGV[9] '1'
--   to delete the failure marker and the back-off, '0' when the claim
--   found no value (so no back-off: it lives no longer than its value).
-- To only publish: ARGV[5] how long the message is kept for the holder's
--   waiters (in the failure marker's place), in ms.
-- For a failure: ARGV[5] how long the failure marker lives, in ms;
--   ARGV[6] the first back-off of failing refreshes in ms ('0': no
--   back-off); ARGV[7] the longest back-off in ms.
-- Returns 0 when the lock was not the caller's (nothing is written or
-- published), else {1, store error, publish error}, each '' when none: a
-- value Redis refused to store (out of memory) still releases the lock and
-- tells the waiters.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end

local function errText(e)
  if type(e) == 'table' then return e.err end
  return tostring(e)
end

local msg = ARGV[4]
local storeErr = ''
if ARGV[3] == 's' then
  if msg == 'v' then msg = 'v' .. ARGV[5] end
  local ok, e = pcall(redis.call, 'SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
  if ok then
    if ARGV[9] == '1' then redis.call('DEL', KEYS[3], KEYS[4]) end
  else
    storeErr = errText(e)
    -- Waiters given the value itself still get it; waiters told to read
    -- it would find nothing: tell them the store failed.
    if string.sub(msg, 1, 1) ~= 'v' then msg = 'e' .. 'value not stored: ' .. storeErr end
  end
elseif ARGV[3] == 'n' then
  -- Waiters of this holder that look again before the message reaches
  -- them find the value here: it is not stored, so they could not read it.
  if string.sub(msg, 1, 1) == 'v' then
    pcall(redis.call, 'SET', KEYS[3], ARGV[1] .. ' ' .. msg, 'PX', ARGV[5])
  end
elseif ARGV[3] == 'f' then
  -- Waiters of this holder that look again find its failure here.
  pcall(redis.call, 'SET', KEYS[3], ARGV[1] .. ' ' .. msg, 'PX', ARGV[5])
  if ARGV[6] ~= '0' then
    local life = redis.call('PTTL', KEYS[2])
    if life > 0 then
      local n = 0
      local b = redis.call('GET', KEYS[4])
      if b then n = tonumber(string.match(b, ' (%d+)$')) or 0 end
      local pause = math.min(tonumber(ARGV[6]) * 2 ^ math.min(n, 30), tonumber(ARGV[7]))
      local t = redis.call('TIME')
      local nowMs = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      pcall(redis.call, 'SET', KEYS[4], string.format('%d %d', nowMs + pause, n + 1), 'PX', life)
    end
  end
end
redis.call('DEL', KEYS[1])
local cmd = 'PUBLISH'
if ARGV[2] == '1' then cmd = 'SPUBLISH' end
local publishErr = ''
local ok, e = pcall(redis.call, cmd, KEYS[1], msg)
if not ok then publishErr = errText(e) end
if ARGV[3] == 's' and storeErr == '' and ARGV[7] ~= ''
    and not (KEYS[6] and redis.call('EXISTS', KEYS[6]) == 0) then
  pcall(redis.call, 'PUBLISH', ARGV[7], ARGV[8])
end
return {1, storeErr, publishErr}
