end)()
if creply[1] == 0 then
  redis.call('ZADD', CS, string.format('%d', cnow + clease), cid)
  redis.call('ZREM', CQ, cid)
  redis.call('ZREM', CW, cid)
  conc_keep()
elseif creply[1] == 1 then
  conc_free({cid})
end
return creply
