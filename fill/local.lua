-- Keep the fleet's local-tier flag in place: while it is, every server
-- orders a key's entries and deletes by stamps (claim.lua, delete.lua) and
-- publishes them as invalidations (settle.lua, delete.lua); without it,
-- they do neither.
-- KEYS[1] the flag P:local.
-- ARGV[1] a random token; ARGV[2] the flag's TTL in ms.
-- The flag's value is the server's clock, in ms, when it was put in place,
-- a space, and the token of the server that put it: stamps issued under
-- the flag are later than that clock (claim.lua, delete.lua), so later
-- than every stamp issued without it.
-- Returns the flag's value: a new one tells that the flag was missing,
-- so that stores and deletes may have gone unpublished until now.
local g = redis.call('GET', KEYS[1])
if not g then
  local t = redis.call('TIME')
  g = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) .. ' ' .. ARGV[1]
end
redis.call('SET', KEYS[1], g, 'PX', ARGV[2])
return g
