-- Destroy an engine client as faye-redis's destroyClient does, in one step:
-- score 0 first (no longer alive for anyone), unsubscribe both sides, drop
-- its queue, remove it, and announce the close to every Faye server.
-- KEYS[1] the clients ZSET; KEYS[2] the client's channel SET; KEYS[3] its
-- queue; KEYS[4..] the subscriber SET of each name or pattern.
-- ARGV[1] the client id; ARGV[2] the close notification channel;
-- ARGV[3..] the names, in KEYS[4..] order.
redis.call('ZADD', KEYS[1], 0, ARGV[1])
for i = 4, #KEYS do
  redis.call('SREM', KEYS[2], ARGV[i - 1])
  redis.call('SREM', KEYS[i], ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
