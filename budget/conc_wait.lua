-- The concurrency gate of a booking (after conc.lua, around wait.lua): a
-- caller takes a slot when it holds one already (a booking again after a
-- pause), when the line is empty and a slot is free, or when it is among the
-- first waiters of the line with as many slots free; else it joins the line
-- (or keeps its place) and is told {3, wait}: sleep until a wake-up names it,
-- or wait µs at most (the head of the line: the earliest lease's end; -1
-- for no limit, see conc_next). The rate booking below runs
-- only when the caller may take a slot; a booking takes it, a refusal gives
-- up the slot and the place.
if conc_clean() > 0 then conc_wake() end
local cheld = redis.call('ZSCORE', CS, cid)
if not cheld then
  local rank = redis.call('ZRANK', CQ, cid)
  local free = conc_free_now()
  local waiting = redis.call('ZCARD', CQ)
  if not rank and (free <= 0 or waiting > 0) then return conc_queue(waiting) end
  if rank and rank >= free then
    redis.call('ZADD', CW, string.format('%d', cnow + clease), cid)
    return {3, conc_next(rank)}
  end
end
local creply = (function()
