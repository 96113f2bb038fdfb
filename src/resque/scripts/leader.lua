-- Scheduler leader election, with node-resque's semantics on its key
-- `resque_scheduler_leader_lock` (value: the scheduler's name, with a TTL):
-- take it if free, renew it if ours. Ruby's resque-scheduler uses its own
-- `<ns>:<ns>:resque_scheduler_master_lock`; while that one is held, the
-- leader does not move jobs.
--
-- KEYS: leader lock, Ruby master lock. ARGV: name, ttl seconds.
-- Returns {leader 1|0, ruby lock held 1|0}.
local leader = 0
if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then
  leader = 1
elseif redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  leader = 1
end
return {leader, redis.call('EXISTS', KEYS[2])}
