-- Register a new engine client with a real timestamp (never score 0, which
-- Faye reads as "being created or destroyed") and subscribe it.
-- KEYS[1] the clients ZSET; KEYS[2] the client's channel SET; KEYS[3..] the
-- subscriber SET of each name or pattern.
-- ARGV[1] the client id; ARGV[2] now in ms; ARGV[3..] the names, in KEYS order.
-- Returns 0 (and writes nothing) if the id is taken.
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then
  return 0
end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[2], ARGV[i])
  redis.call('SADD', KEYS[i], ARGV[1])
end
return 1
