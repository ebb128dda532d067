-- Concurrency slots: at most N calls in flight across the fleet. This block
-- is put before wait.lua and giveback.lua (see conc.go) when the budget has
-- Options.Concurrency; without it those scripts run unchanged.
-- KEYS[1] the budget hash P{name}:budget, whose channel wake-ups go on;
-- KEYS[2] P{name}:budget:slots, a ZSET of the holders of a slot, scored by
--         their lease's end (µs of the Redis clock);
-- KEYS[3] P{name}:budget:queue, a ZSET of the callers waiting for a slot,
--         scored by arrival (µs of the Redis clock, kept increasing): FIFO;
-- KEYS[4] P{name}:budget:queued, the same callers scored by their lease's
--         end: a caller that stops renewing (its server died) leaves the
--         line.
-- The last four ARGV are this block's, taken off before the script's own:
-- N, the lease (µs), '1' to announce with SPUBLISH (Redis Cluster) else
-- PUBLISH, and the caller's holder id.
local cid = table.remove(ARGV)
local cpub = table.remove(ARGV)
local clease = tonumber(table.remove(ARGV))
local cn = tonumber(table.remove(ARGV))
local ct = redis.call('TIME')
local cnow = tonumber(ct[1]) * 1000000 + tonumber(ct[2])

-- zrem removes the members ids from key, a thousand at a time (unpack's
-- limit).
local function zrem(key, ids)
  for i = 1, #ids, 1000 do
    redis.call('ZREM', key, unpack(ids, i, math.min(i + 999, #ids)))
  end
end
-- conc_clean drops the holders and waiters whose lease ended, and returns
-- how many it dropped.
local function conc_clean()
  local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', cnow)
  if #gone > 0 then
    zrem(KEYS[3], gone)
    zrem(KEYS[4], gone)
  end
  return #gone + redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cnow)
end
-- conc_wake tells the waiters at the head of the line that a slot is free
-- for each of them: one message naming them, on the budget's channel.
-- Telling one twice costs nothing: a caller acts on the first word.
local function conc_wake()
  local free = cn - redis.call('ZCARD', KEYS[2])
  if free <= 0 then return end
  local heads = redis.call('ZRANGE', KEYS[3], 0, free - 1)
  if #heads == 0 then return end
  local msg = 'c ' .. table.concat(heads, ' ')
  if cpub == '1' then
    redis.call('SPUBLISH', KEYS[1], msg)
  else
    redis.call('PUBLISH', KEYS[1], msg)
  end
end
-- conc_keep makes the keys outlive every lease they hold.
local function conc_keep()
  local ms = math.ceil(clease / 1000) * 2 + 1000
  for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ms) end
end
-- conc_next is how long a waiter at rank in line sleeps at most before it
-- looks again without a word (µs). The head of the line looks when the
-- earliest lease ends, which frees a slot or its place if the holder stopped
-- renewing; the others (-1) wait for a wake-up: the head's look, or the
-- renewals of any server with a slot or a place (slot.lua), drop the leases
-- that ended and wake the waiters they let through. No waiter polls.
local function conc_next(rank)
  if rank > 0 then return -1 end
  local at = cnow + clease
  for i = 2, 4, 2 do
    local e = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if e[2] then at = math.min(at, tonumber(e[2])) end
  end
  return math.max(1000, at - cnow)
end
-- conc_free frees the slot or the place in line of each of ids, and wakes
-- the waiters it lets through. It returns how many slots it freed.
local function conc_free(ids)
  zrem(KEYS[3], ids)
  zrem(KEYS[4], ids)
  local n = 0
  for i = 1, #ids, 1000 do
    n = n + redis.call('ZREM', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
  end
  conc_wake()
  return n
end
