end)()
if creply[1] == 0 then
  redis.call('ZADD', KEYS[2], string.format('%d', cnow + clease), cid)
  redis.call('ZREM', KEYS[3], cid)
  redis.call('ZREM', KEYS[4], cid)
  conc_keep()
elseif creply[1] == 1 then
  conc_free({cid})
end
return creply
