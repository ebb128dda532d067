-- After the booking of a pool with a concurrency cap per key (see
-- keys_conc.lua): a caller booked holds a slot on the key picked (kid); one
-- refused gives up its slot and place; one told to come back (the
-- background line) keeps the slot it held, on its key.
if kreply[1] == 0 then
  redis.call('ZADD', CS, string.format('%d', cnow + clease), cid)
  redis.call('ZREM', CQ, cid)
  redis.call('ZREM', CW, cid)
  redis.call('HSET', CH, cid, kid)
  redis.call('HINCRBY', CI, kid, 1)
  redis.call('HINCRBY', CI, '*', 1)
  conc_keep()
elseif kreply[1] == 1 then
  conc_free({cid})
elseif cmine then
  redis.call('HSET', CH, cid, cmine)
  redis.call('HINCRBY', CI, cmine, 1)
  redis.call('HINCRBY', CI, '*', 1)
  conc_keep()
end
