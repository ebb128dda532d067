-- Free or renew concurrency slots and places in line (after conc.lua, whose
-- holder id argument is unused here: give '').
-- ARGV[1] 'free': ARGV[2...] the holder ids whose slots and places go back;
--   returns the number of slots freed. Waiters let through are woken.
-- ARGV[1] 'renew': ARGV[2...] the holder ids of one server, whose slots and
--   places get a lease from now; returns the ids that hold neither (their
--   lease ran out, or they were freed). Holders whose lease ended are dropped
--   first, and the waiters they let through woken.
local op = table.remove(ARGV, 1)
local ids = ARGV
if op == 'free' then return conc_free(ids) end
if conc_clean() > 0 then conc_wake() end
local lost = {}
local at = string.format('%d', cnow + clease)
for _, id in ipairs(ids) do
  if redis.call('ZSCORE', CS, id) then
    redis.call('ZADD', CS, at, id)
  elseif redis.call('ZSCORE', CW, id) then
    redis.call('ZADD', CW, at, id)
  else
    lost[#lost + 1] = id
  end
end
conc_keep()
return lost
