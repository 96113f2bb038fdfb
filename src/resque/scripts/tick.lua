-- Record that recurring schedule `name` handled its tick `new_last`, and
-- enqueue its job, in one step, only if the stored last tick is still
-- `expected` ('' for none): however many scheduler leaders come and go, a
-- tick enqueues at most one job.
--
-- KEYS: the schedules hash. ARGV: prefix, name, expected, new_last, queue,
-- payload, number of jobs. Returns 1 if recorded, 0 if not.
local current = redis.call('HGET', KEYS[1], ARGV[2])
if (current or '') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
local jobs = tonumber(ARGV[7])
if jobs > 0 then
  redis.call('SADD', ARGV[1] .. 'queues', ARGV[5])
  for _ = 1, jobs do
    redis.call('RPUSH', ARGV[1] .. 'queue:' .. ARGV[5], ARGV[6])
  end
end
return 1
