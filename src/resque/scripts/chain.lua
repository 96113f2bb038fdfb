-- Keep one link of an actionHero recurring task's chain alive. The link is
-- present if its payload is in its queue, in the delayed queue, or running
-- in some worker's status key. A chain found missing twice, `grace` seconds
-- apart or more, lost its link (a dead peer took it): one is enqueued, in
-- the same step as the check, so no second one appears.
--
-- KEYS: the chains hash. ARGV: prefix, queue, payload, class, now, grace.
-- Returns 1 if a link was restored.
local prefix, queue, payload, class, now, grace =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local function present()
  if redis.call('LPOS', prefix .. 'queue:' .. queue, payload) then return true end
  if redis.call('SCARD', prefix .. 'timestamps:' .. payload) > 0 then return true end
  local needle = '"class":' .. cjson.encode(class)
  for _, id in ipairs(redis.call('SMEMBERS', prefix .. 'workers')) do
    local status = redis.call('GET', prefix .. 'worker:' .. id)
    if status and string.find(status, needle, 1, true) then return true end
  end
  return false
end
if present() then
  redis.call('HDEL', KEYS[1], class)
  return 0
end
local since = tonumber(redis.call('HGET', KEYS[1], class))
if not since then
  redis.call('HSET', KEYS[1], class, now)
  return 0
end
if now - since < grace then return 0 end
redis.call('SADD', prefix .. 'queues', queue)
redis.call('RPUSH', prefix .. 'queue:' .. queue, payload)
redis.call('HDEL', KEYS[1], class)
return 1
