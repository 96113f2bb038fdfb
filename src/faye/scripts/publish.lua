-- Publish one message as the faye-redis 0.2.0 engine does, atomically, so
-- that messages from one publisher reach every queue in publish order.
-- KEYS: the subscriber sets of every name `expand(channel)` gives.
-- ARGV[1] the message JSON; ARGV[2] the clients ZSET; ARGV[3], ARGV[4] the
-- queue key around a client id; ARGV[5] the messages notification channel;
-- ARGV[6] the liveness cutoff in ms (now - 1600 * timeout).
-- For every subscriber: RPUSH, PUBLISH its id, then drop the queue again if
-- the client is not alive (missing, 0, or last ping at or before the cutoff),
-- as Node does, so no orphan queue outlives its client.
-- Returns how many clients the message was pushed to.
local ids = redis.call('SUNION', unpack(KEYS))
local cutoff = tonumber(ARGV[6])
for _, id in ipairs(ids) do
  local queue = ARGV[3] .. id .. ARGV[4]
  redis.call('RPUSH', queue, ARGV[1])
  redis.call('PUBLISH', ARGV[5], id)
  local score = tonumber(redis.call('ZSCORE', ARGV[2], id))
  if not score or score <= cutoff then
    redis.call('DEL', queue)
  end
end
return #ids
