-- Concurrency slots: at most N calls in flight across the fleet. This block
-- is put before wait.lua and giveback.lua (see conc.go) when the budget has
-- Options.Concurrency; without it those scripts run unchanged. It comes
-- after a line that sets cx, where its keys start, and cz, the pool's index
-- (Options.Keys) or nil:
-- KEYS[1] the budget hash P{name}:budget, whose channel wake-ups go on;
-- KEYS[cx+2] P{name}:budget:slots, a ZSET of the holders of a slot, scored
--         by their lease's end (µs of the Redis clock);
-- KEYS[cx+3] P{name}:budget:queue, a ZSET of the callers waiting for a
--         slot, scored by arrival (µs of the Redis clock, kept increasing):
--         FIFO;
-- KEYS[cx+4] P{name}:budget:queued, the same callers scored by their lease's
--         end: a caller that stops renewing (its server died) leaves the
--         line.
-- With a pool of keys the cap is per key and the line is the pool's: a
-- waiter takes a slot on whichever key has one first. Then
-- KEYS[cx+5] P{name}:budget:kin, a hash of each key's id (see keyfield.lua)
--         and how many slots it holds, and '*' and how many in all, and
-- KEYS[cx+6] P{name}:budget:kheld, a hash of each holder id and the id of
--         the key it holds a slot on;
-- a key's slots free are N less its count, and the slots free in all are
-- those of the keys in the index, cz.
-- The last four ARGV are this block's, taken off before the script's own:
-- N, the lease (µs), '1' to announce with SPUBLISH (Redis Cluster) else
-- PUBLISH, and the caller's holder id.
local CS, CQ, CW, CI, CH = KEYS[cx + 2], KEYS[cx + 3], KEYS[cx + 4], KEYS[cx + 5], KEYS[cx + 6]
local cchan = KEYS[1]
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
-- ccounts are a pool's counts by key id, read once per script (see
-- conc_counts), or false when not read since they last changed.
local ccounts = false
local function conc_counts()
  if not ccounts then
    ccounts = {}
    local all = redis.call('HGETALL', CI)
    for i = 1, #all, 2 do ccounts[all[i]] = tonumber(all[i + 1]) or 0 end
  end
  return ccounts
end
-- conc_unkey forgets the key of each holder of ids that held a slot on
-- one (a pool's), and gives the slot back to the key's count.
local function conc_unkey(ids)
  if not cz then return end
  ccounts = false
  for _, id in ipairs(ids) do
    local k = redis.call('HGET', CH, id)
    if k then
      redis.call('HDEL', CH, id)
      if redis.call('HINCRBY', CI, k, -1) <= 0 then redis.call('HDEL', CI, k) end
      if redis.call('HINCRBY', CI, '*', -1) <= 0 then redis.call('HDEL', CI, '*') end
    end
  end
end
-- conc_recount makes a pool's counts those of the holders again, when
-- they disagree (Redis lost or evicted one of the keys, not the others): a
-- holder whose key was lost loses its slot (its server hears so at its next
-- renewal), and a key's count is its holders'. It returns how many slots
-- it freed.
local function conc_recount()
  local held = redis.call('ZCARD', CS)
  if held == 0 then
    redis.call('DEL', CI, CH)
    ccounts = false
    return 0
  end
  if redis.call('HLEN', CH) == held and tonumber(redis.call('HGET', CI, '*')) == held then return 0 end
  ccounts = false
  local ids = redis.call('ZRANGE', CS, 0, -1)
  local keyOf = redis.call('HGETALL', CH)
  local key, counts, drop, stale = {}, {}, {}, {}
  for i = 1, #keyOf, 2 do key[keyOf[i]] = keyOf[i + 1] end
  for _, id in ipairs(ids) do
    local k = key[id]
    if k then
      counts[k] = (counts[k] or 0) + 1
      key[id] = nil
    else
      drop[#drop + 1] = id
    end
  end
  for id in pairs(key) do stale[#stale + 1] = id end
  if #drop > 0 then zrem(CS, drop) end
  for i = 1, #stale, 1000 do redis.call('HDEL', CH, unpack(stale, i, math.min(i + 999, #stale))) end
  redis.call('DEL', CI)
  for k, n in pairs(counts) do redis.call('HSET', CI, k, n) end
  if held > #drop then redis.call('HSET', CI, '*', held - #drop) end
  return #drop
end
-- conc_clean drops the holders and waiters whose lease ended, and returns
-- how many it dropped (with a pool, those conc_recount dropped too).
local function conc_clean()
  local gone = redis.call('ZRANGEBYSCORE', CW, '-inf', cnow)
  if #gone > 0 then
    zrem(CQ, gone)
    zrem(CW, gone)
  end
  if not cz then return #gone + redis.call('ZREMRANGEBYSCORE', CS, '-inf', cnow) end
  local lost = redis.call('ZRANGEBYSCORE', CS, '-inf', cnow)
  if #lost > 0 then
    zrem(CS, lost)
    conc_unkey(lost)
  end
  return #gone + #lost + conc_recount()
end
-- conc_room reports how many more slots the key of id may hold.
local function conc_room(id)
  return cn - (conc_counts()[id] or 0)
end
-- conc_free_now returns how many slots are free: of the budget, or of the
-- keys in the pool's index (two reads, whatever the pool's size).
local function conc_free_now()
  if not cz then return cn - redis.call('ZCARD', CS) end
  local ids = redis.call('ZRANGE', cz, 0, -1)
  local counts, free, made = conc_counts(), 0, false
  for _, id in ipairs(ids) do
    if id == '#' then
      made = true
    else
      free = free + math.max(0, cn - (counts[id] or 0))
    end
  end
  -- An index Redis lost (its hour out, FLUSHALL) is made again by the
  -- next booking: one key's worth of waiters are let through to make it.
  if not made then return cn end
  return free
end
-- conc_wake tells the waiters at the head of the line that a slot is free
-- for each of them: one message naming them, on the budget's channel.
-- Telling one twice costs nothing: a caller acts on the first word.
local function conc_wake()
  local free = conc_free_now()
  if free <= 0 then return end
  local heads = redis.call('ZRANGE', CQ, 0, free - 1)
  if #heads == 0 then return end
  local msg = 'c ' .. table.concat(heads, ' ')
  if cpub == '1' then
    redis.call('SPUBLISH', cchan, msg)
  else
    redis.call('PUBLISH', cchan, msg)
  end
end
-- conc_keep makes the keys outlive every lease they hold.
local function conc_keep()
  local ms = math.ceil(clease / 1000) * 2 + 1000
  for i = 2, cz and 6 or 4 do redis.call('PEXPIRE', KEYS[cx + i], ms) end
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
  for _, k in ipairs({CS, CW}) do
    local e = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if e[2] then at = math.min(at, tonumber(e[2])) end
  end
  return math.max(1000, at - cnow)
end
-- conc_free frees the slot or the place in line of each of ids, and wakes
-- the waiters it lets through. It returns how many slots it freed.
local function conc_free(ids)
  zrem(CQ, ids)
  zrem(CW, ids)
  local n = 0
  for i = 1, #ids, 1000 do
    n = n + redis.call('ZREM', CS, unpack(ids, i, math.min(i + 999, #ids)))
  end
  conc_unkey(ids)
  conc_wake()
  return n
end
-- conc_queue puts the caller last in the line, waiting ahead of it, and
-- returns the wait script's {3, wait}.
local function conc_queue(waiting)
  local last = redis.call('ZRANGE', CQ, -1, -1, 'WITHSCORES')
  local seq = cnow
  if last[2] and tonumber(last[2]) >= seq then seq = tonumber(last[2]) + 1 end
  redis.call('ZADD', CQ, string.format('%d', seq), cid)
  redis.call('ZADD', CW, string.format('%d', cnow + clease), cid)
  conc_keep()
  return {3, conc_next(waiting)}
end
