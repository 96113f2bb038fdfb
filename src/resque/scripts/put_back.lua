-- Put a taken job back at the head of its queue, if the worker's status key
-- still holds it (the same fence as the ack). One atomic step: the job is in
-- the status key or in the queue, never in neither and never in both.
--
-- KEYS: status key, queue key. ARGV: expected status value, payload bytes.
-- Returns 1 if the job went back, 0 if the status no longer held it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
