-- Gather the keys that the servers of a fleet claimed for one batch loader
-- name into fleet-wide batches: servers hand their claimed keys off to a
-- queue, and one gatherer, elected by a lease, pops them.
-- KEYS[1] the gatherer's lease P{batch:N}:gatherer; KEYS[2] the queue
-- P{batch:N}:queue; KEYS[3] the keys popped and not yet settled,
-- P{batch:N}:loading. An item is "token stamp key": the claim's token and
-- stamp (see claim.lua) and the key.
-- ARGV[1] the caller's token; ARGV[2] the lease in ms; ARGV[3] how long the
-- queue and the loading list live unless touched (a hand-off, a pop), in
-- ms; ARGV[4] the mode:
--   'h' hand off: ARGV[5..] the items, queued; the caller takes the lease if
--       nobody holds it. Returns 1 when the caller now gathers, else 0.
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
-- Every mode but 'h' first takes items the caller settled off the loading
-- list: ARGV[8..] for 'g', ARGV[5..] for the others. A gatherer sends them
-- with its next call rather than on their own, as the batch's values
-- reach the fleet.
-- push appends items[from..] to the list key, a thousand at a time: Redis's
-- Lua unpacks at most about 8,000 values (a MaxSize or a hand-off larger
-- than that failed every pop).
local function push(key, items, from)
  for i = from, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end

local mode = ARGV[4]
if mode ~= 'h' then
  local from = 5
  if mode == 'g' then from = 8 end
  for i = from, #ARGV do redis.call('LREM', KEYS[3], 1, ARGV[i]) end
  if mode == 'd' then return 1 end
end
if mode == 'h' then
  push(KEYS[2], ARGV, 5)
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
  if holder == ARGV[1] and redis.call('LLEN', KEYS[2]) == 0 and redis.call('LLEN', KEYS[3]) == 0 then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
local recovered = {}
local fresh = 0
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if ARGV[7] == '1' then recovered = redis.call('LRANGE', KEYS[3], 0, -1) end
elseif holder then
  return {0, redis.call('PTTL', KEYS[1])}
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  recovered = redis.call('LRANGE', KEYS[3], 0, -1)
  fresh = 1
end
local popped = {}
local n = tonumber(ARGV[5])
if ARGV[6] == '1' and redis.call('LLEN', KEYS[2]) < n then n = 0 end
if n > 0 then
  local items = redis.call('LPOP', KEYS[2], n)
  if items then popped = items end
end
if #popped > 0 then
  push(KEYS[3], popped, 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return {1, popped, recovered, fresh}
