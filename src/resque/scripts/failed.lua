-- Retry or remove entries of the `failed` list, in one atomic step: an
-- entry leaves the list exactly when its payload enters its queue (retry),
-- so a crash at any moment neither loses nor doubles one.
--
-- The caller read a window of the list (`n` entries from index `start`) and
-- names the entries to act on by their offset in it. If the window is still
-- exactly what was read (only the tail moves under workers, which RPUSH),
-- the targets are marked with `tombstone` (a value no record can equal) and
-- removed with one LREM. Otherwise someone else removed entries meanwhile:
-- each target is removed by its exact value (LREM count 1), and pushed only
-- if it was still there.
--
-- ARGV: prefix, start, tombstone, n, {entry} * n,
--       n_targets, {offset (1-based), queue ('' to remove), payload} * n_targets
-- Returns {done, fenced}: how many targets were still there and acted on,
-- and 1 if the window was intact.
local prefix, start, tombstone = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local n = tonumber(ARGV[4])
local failed = prefix .. 'failed'
local i = 5 + n
local n_targets = tonumber(ARGV[i]); i = i + 1

local window = redis.call('LRANGE', failed, start, start + n - 1)
local intact = #window == n
if intact then
  for k = 1, n do
    if window[k] ~= ARGV[4 + k] then intact = false; break end
  end
end

local function enqueue(queue, payload)
  if queue ~= '' then
    redis.call('SADD', prefix .. 'queues', queue)
    redis.call('RPUSH', prefix .. 'queue:' .. queue, payload)
  end
end

local done = 0
for t = 1, n_targets do
  local offset, queue, payload = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if intact then
    redis.call('LSET', failed, start + offset - 1, tombstone)
    enqueue(queue, payload)
    done = done + 1
  elseif redis.call('LREM', failed, 1, ARGV[4 + offset]) == 1 then
    enqueue(queue, payload)
    done = done + 1
  end
end
if intact and n_targets > 0 then
  redis.call('LREM', failed, n_targets, tombstone)
end
return {done, intact and 1 or 0}
