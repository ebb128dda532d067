-- Gather the keys that the servers of a fleet claimed for one batch loader
-- name into fleet-wide batches: servers hand their claimed keys off to a
-- queue, and one gatherer, elected by a lease, pops them.
-- KEYS[1] the gatherer's lease P{batch:N}:gatherer; KEYS[2] the queue
-- P{batch:N}:queue, a sorted set of items by their claim's stamp (first
-- claimed, first popped); KEYS[3] the items popped and not yet settled,
-- P{batch:N}:loading, a set. An item is "token stamp key": the claim's
-- token and stamp (see claim.lua) and the key. Both are sets so that a
-- server can ask whether the items it handed off are still there (mode
-- 'a') without a scan.
-- ARGV[1] the caller's token; ARGV[2] the lease in ms; ARGV[3] how long the
-- queue and the loading list live unless touched (a hand-off, a pop), in
-- ms; ARGV[4] the mode:
--   'h' hand off: ARGV[5..] the items, queued (an item queued already, a
--       hand-off sent again, stays queued once); the caller takes the lease
--       if nobody holds it. Returns 1 when the caller now gathers, else 0.
--   'g' gather: unless another holds the lease, take or renew it, and pop up
--       to ARGV[5] items onto the loading list (with ARGV[6] '1', only if
--       the queue holds that many: a full batch). Returns {1, popped,
--       recovered, fresh}, recovered being the loading list when the lease
--       was taken anew (a gatherer's whose lease ran out, now the caller's:
--       fresh is 1, else 0) or when ARGV[7] is '1' (the caller lost the
--       reply to a pop, or gave up a batch), or {0, pttl} while another
--       gathers.
--   'd' done: returns 1.
--   'q' quit: release the lease if the caller holds it and the queue and the
--       loading list are empty. Returns 1 when released, else 0.
--   'r' resign: release the lease if the caller holds it (it closes).
--   'a' audit: ARGV[5..] items the caller handed off; returns, for each, 1
--       while it is queued or loading, else 0 (lost: a failover, an
--       eviction, a FLUSHALL, a batch that ended without settling it).
-- Every mode but 'h' and 'a' first takes items the caller settled off the
-- loading list: ARGV[8..] for 'g', ARGV[5..] for the others. A gatherer
-- sends them with its next call rather than on their own, as the batch's
-- values reach the fleet.
-- each runs cmd on key with items[from..], a thousand at a time: Redis's
-- Lua unpacks at most about 8,000 values (a MaxSize or a hand-off larger
-- than that failed every pop).
local function each(cmd, key, items, from)
  for i = from, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end

local mode = ARGV[4]
if mode == 'a' then
  local found = {}
  for i = 5, #ARGV do
    local f = 0
    if redis.call('ZSCORE', KEYS[2], ARGV[i]) or redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 1 then f = 1 end
    found[#found + 1] = f
  end
  return found
end
if mode ~= 'h' then
  local from = 5
  if mode == 'g' then from = 8 end
  each('SREM', KEYS[3], ARGV, from)
  if mode == 'd' then return 1 end
end
if mode == 'h' then
  for i = 5, #ARGV, 500 do
    local args = {}
    for j = i, math.min(i + 499, #ARGV) do
      args[#args + 1] = string.match(ARGV[j], '^%S+ (%d+) ') or '0'
      args[#args + 1] = ARGV[j]
    end
    redis.call('ZADD', KEYS[2], unpack(args))
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
  return 0
end
if mode == 'g' then
  -- Every server that waits for keys it handed off pops (or polls the
  -- lease): the queue and the loading list live as long as one does,
  -- however long a batch loads while keys wait behind it.
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
local holder = redis.call('GET', KEYS[1])
if mode == 'r' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 1
end
if mode == 'q' then
  if holder == ARGV[1] and redis.call('ZCARD', KEYS[2]) == 0 and redis.call('SCARD', KEYS[3]) == 0 then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
local recovered = {}
local fresh = 0
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if ARGV[7] == '1' then recovered = redis.call('SMEMBERS', KEYS[3]) end
elseif holder then
  return {0, redis.call('PTTL', KEYS[1])}
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  recovered = redis.call('SMEMBERS', KEYS[3])
  fresh = 1
end
local popped = {}
local n = tonumber(ARGV[5])
if ARGV[6] == '1' and redis.call('ZCARD', KEYS[2]) < n then n = 0 end
if n > 0 then
  local flat = redis.call('ZPOPMIN', KEYS[2], n)
  for i = 1, #flat, 2 do popped[#popped + 1] = flat[i] end
end
if #popped > 0 then
  each('SADD', KEYS[3], popped, 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return {1, popped, recovered, fresh}
