-- A concurrency cap per key of a pool (Options.Keys with
-- Options.Concurrency), around keys.lua and wait.lua, after conc.lua and
-- keyfield.lua: each key holds at most N slots, and the pool has one line,
-- first come first served, whichever key frees a slot. Before the pick
-- (kgate): a caller that holds a slot already (a booking again after its
-- key's pause) gives it back to its key's count and picks again, on any key
-- with room, its own included; a caller that does not is let through as by
-- conc_wait.lua (the line empty and a slot free in the pool, or among the
-- first waiters with as many slots free), or joins the line or keeps its
-- place. The pick skips the keys with no room (kroom). When none of the
-- caller's keys has room (a server whose keys are fewer than the fleet's,
-- whose slots were the ones counted free), the caller goes in line (kfull).
-- After the booking (keys_conc_end.lua), a caller booked holds a slot on
-- the key picked.
if conc_clean() > 0 then conc_wake() end
-- cmine is the key the caller held a slot on before this booking, or false.
local cmine = false
kroom = function(id) return conc_room(id) > 0 end
kgate = function(gone, gen)
  if redis.call('ZSCORE', CS, cid) then
    cmine = redis.call('HGET', CH, cid) or false
    conc_unkey({cid})
    return nil
  end
  local rank = redis.call('ZRANK', CQ, cid)
  local free = conc_free_now()
  local waiting = redis.call('ZCARD', CQ)
  if not rank and (free <= 0 or waiting > 0) then return {conc_queue(waiting), 0, gone, gen} end
  if rank and rank >= free then
    redis.call('ZADD', CW, string.format('%d', cnow + clease), cid)
    return {{3, conc_next(rank)}, 0, gone, gen}
  end
  return nil
end
kfull = function(gone, gen, cands)
  local live = false
  for i = 1, #cands / 17 do
    if redis.call('ZSCORE', cz, string.sub(cands, (i - 1) * 17 + 1, (i - 1) * 17 + 16)) then
      live = true
      break
    end
  end
  if not live then
    -- No key of the caller's is left: its slot and place go back.
    conc_free({cid})
    return {{5, 0}, 0, gone, gen}
  end
  if redis.call('ZSCORE', CS, cid) then conc_free({cid}) end
  local rank = redis.call('ZRANK', CQ, cid)
  if not rank then return {conc_queue(redis.call('ZCARD', CQ)), 0, gone, gen} end
  redis.call('ZADD', CW, string.format('%d', cnow + clease), cid)
  conc_keep()
  return {{3, conc_next(rank)}, 0, gone, gen}
end
