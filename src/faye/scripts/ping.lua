-- Refresh an engine client's liveness if it is still alive.
-- KEYS[1] the clients ZSET. ARGV[1] the client id; ARGV[2] now in ms;
-- ARGV[3] the liveness cutoff in ms (now - 1600 * timeout).
-- Returns 1 when refreshed; 0 when the client is missing, being destroyed
-- (score 0) or already past the cutoff (publishers drop its messages, and a
-- GC sweep may destroy it at any moment): the caller registers anew.
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not score or score <= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
return 1
