-- Move due delayed jobs into their queues: each job leaves `delayed:<ts>`
-- and enters its queue in this one atomic step, so a scheduler killed at any
-- moment loses nothing and queues nothing twice. Runs only while the caller
-- still holds the leader lock (a fence against a leader that lost it).
--
-- The payload moves verbatim; its queue is the payload's `queue` field
-- (node-resque and resque-scheduler both write it). A payload without one
-- cannot be routed and goes to `failed` with its bytes.
--
-- ARGV: prefix, now (Unix s), max jobs, leader name, failed_at
-- Returns the number of jobs moved, or -1 if the caller is not the leader.
local prefix, now, max, leader, failed_at = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
if redis.call('GET', prefix .. 'resque_scheduler_leader_lock') ~= leader then return -1 end
local schedule = prefix .. 'delayed_queue_schedule'
local moved = 0
while moved < max do
  local due = redis.call('ZRANGEBYSCORE', schedule, '-inf', now, 'LIMIT', 0, 1)
  if #due == 0 then break end
  local ts = due[1]
  local key = prefix .. 'delayed:' .. ts
  local job = redis.call('LPOP', key)
  if job then
    -- node-resque 2+ and resque-scheduler store the member without the
    -- namespace, node-resque 0.x (actionHero 7) with it.
    redis.call('SREM', prefix .. 'timestamps:' .. job, 'delayed:' .. ts, key)
    local ok, decoded = pcall(cjson.decode, job)
    local queue = ok and type(decoded) == 'table' and decoded['queue']
    if type(queue) == 'string' and queue ~= '' then
      redis.call('SADD', prefix .. 'queues', queue)
      redis.call('RPUSH', prefix .. 'queue:' .. queue, job)
    else
      redis.call('RPUSH', prefix .. 'failed', cjson.encode({
        failed_at = failed_at, payload = job, exception = 'AhWorker::MalformedPayload',
        error = 'delayed job has no queue to move to', backtrace = {}, worker = leader, queue = ''}))
      redis.call('INCR', prefix .. 'stat:failed')
    end
    moved = moved + 1
  end
  if redis.call('LLEN', key) == 0 then
    redis.call('DEL', key)
    redis.call('ZREM', schedule, ts)
  end
end
return moved
