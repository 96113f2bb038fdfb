-- Remove worker registrations: exactly the keys Ruby Resque's
-- unregister_worker and node-resque's untrack delete. A worker whose status
-- key still holds a job is left registered, so the job is not dropped and
-- recovery can find it.
--
-- ARGV: prefix, {id, name} ... Returns the ids left registered.
local prefix = ARGV[1]
local kept = {}
for i = 2, #ARGV, 2 do
  local id, name = ARGV[i], ARGV[i + 1]
  if redis.call('EXISTS', prefix .. 'worker:' .. id) == 1 then
    kept[#kept + 1] = id
  else
    redis.call('SREM', prefix .. 'workers', id)
    redis.call('HDEL', prefix .. 'workers:heartbeat', id)
    redis.call('DEL', prefix .. 'worker:' .. id .. ':started',
      prefix .. 'worker:ping:' .. name,
      prefix .. 'stat:processed:' .. id, prefix .. 'stat:failed:' .. id,
      prefix .. 'stat:processed:' .. name, prefix .. 'stat:failed:' .. name)
  end
end
return kept
