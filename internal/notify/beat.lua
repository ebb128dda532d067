-- Publishes one heartbeat of a Cluster master, stamped with the master's own
-- clock, on the heartbeat channel every Hub of the Cluster shares.
-- KEYS: none (the script runs on the master it names).
-- ARGV[1] the heartbeat channel; ARGV[2] the master's address, as the
-- publisher's client knows it.
-- Publishes "<stamp> <address>" and returns the stamp: the master's TIME in
-- microseconds.
local t = redis.call('TIME')
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('PUBLISH', ARGV[1], string.format('%d', us) .. ' ' .. ARGV[2])
return us
