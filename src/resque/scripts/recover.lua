-- Recover one slot of a dead ah-worker process, in one atomic step: its job
-- goes back to the head of its queue (or to `failed`), and the slot's
-- registration is removed exactly as unregistering removes it.
--
-- The status key must still hold `expected` ('' for none): a second
-- recoverer, or the slot's own late ack, finds it changed and does nothing,
-- so a job is put back at most once.
--
-- A job put back more than `max_recoveries` times within `counter_ttl`
-- seconds (it keeps killing its workers) goes to `failed` instead.
--
-- ARGV: prefix, id, name, expected, mode ('requeue' | 'fail'), queue, raw,
--       failure_json, max_recoveries, poison_failure_json, counter_ttl
-- Returns -1 if the status changed, 0 if there was no job, 1 if it went
-- back to its queue, 2 if it went to `failed`.
local prefix, id, name, expected, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local queue, raw, failure = ARGV[6], ARGV[7], ARGV[8]
local max_recoveries, poison, ttl = tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
local key = prefix .. 'worker:' .. id
local current = redis.call('GET', key)
if (current or '') ~= expected then return -1 end
local result = 0
if current then
  if mode == 'requeue' then
    local counter = prefix .. 'ah-worker:recovered:' .. redis.sha1hex(raw)
    local n = redis.call('INCR', counter)
    redis.call('EXPIRE', counter, ttl)
    if n > max_recoveries then
      redis.call('RPUSH', prefix .. 'failed', poison)
      redis.call('INCR', prefix .. 'stat:failed')
      redis.call('DEL', counter)
      result = 2
    else
      redis.call('LPUSH', prefix .. 'queue:' .. queue, raw)
      result = 1
    end
  else
    redis.call('RPUSH', prefix .. 'failed', failure)
    redis.call('INCR', prefix .. 'stat:failed')
    result = 2
  end
  redis.call('DEL', key)
end
deregister(prefix, id, name)
return result
