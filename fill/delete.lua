-- Delete a cached value and break any fill or refresh in progress, so that a
-- load that started before the delete cannot store its older value after it.
-- KEYS[1] the lock P{K}; KEYS[2] the value P{K}:value;
-- KEYS[3] the failure marker P{K}:failed; KEYS[4] the back-off P{K}:backoff;
-- KEYS[5] the last stamp issued for the key, P{K}:stamp (see claim.lua);
-- KEYS[6], on a plain Redis, the fleet's local-tier flag P:local (see
--   local.lua): without it in place, no server keeps copies, and the delete
--   is neither ordered by the stamp key nor published as an invalidation.
-- ARGV[1] '1' to notify with SPUBLISH (Redis Cluster), else PUBLISH;
-- ARGV[2] the message for the channel P{K}; ARGV[3] the invalidation
-- channel, or '' for none (a Cluster whose fleet keeps no local tier);
-- ARGV[4] the key, for the invalidation message.
-- Returns {keys deleted, the delete's stamp in ms, publish error or ''}:
-- the server's clock, made later than the stamp of every entry of the key
-- (claim.lua), so that a copy of an entry it deleted is older than it.
local n = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local t = redis.call('TIME')
local nowMs = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tier = true
if KEYS[6] then
  -- Stamped as claim.lua stamps.
  local ok, f = pcall(redis.call, 'GET', KEYS[6])
  tier = not (ok and not f)
  local placed = ok and f and tonumber(string.match(f, '^(%d+)'))
  if placed and nowMs <= placed then nowMs = placed + 1 end
end
if tier then
  local ok, last = pcall(redis.call, 'GET', KEYS[5])
  last = ok and last and tonumber(last)
  if last and nowMs <= last then nowMs = last + 1 end
  pcall(redis.call, 'SET', KEYS[5], nowMs, 'PX', 1000)
end
local cmd = 'PUBLISH'
if ARGV[1] == '1' then cmd = 'SPUBLISH' end
local publishErr = ''
local ok, e = pcall(redis.call, cmd, KEYS[1], ARGV[2])
if not ok then publishErr = type(e) == 'table' and e.err or tostring(e) end
if tier and ARGV[3] ~= '' then
  pcall(redis.call, 'PUBLISH', ARGV[3], 'd' .. string.format('%d', nowMs) .. ' ' .. ARGV[4])
end
return {n, nowMs, publishErr}
