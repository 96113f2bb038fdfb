-- Register a new engine client with a real timestamp (never score 0, which
-- Faye reads as "being created or destroyed") and subscribe it.
-- KEYS[1] the clients ZSET; KEYS[2] the client's channel SET; KEYS[3..] the
-- subscriber SET of each name or pattern.
-- ARGV[1] the client id; ARGV[2] now in ms; ARGV[3] 'new' or 'join' (a
-- client shared by a group of processes: taken as is if it exists);
-- ARGV[4..] the names, in KEYS[3..] order.
-- Returns 0 (and writes nothing) if a new id is taken.
if ARGV[3] == 'join' then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
elseif redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then
  return 0
end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[2], ARGV[i + 1])
  redis.call('SADD', KEYS[i], ARGV[1])
end
return 1
