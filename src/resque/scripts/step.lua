-- One round trip of the worker loop: record finished jobs, then take new ones.
--
-- Acks first; a slot may be acked and take a new job in the same step. An
-- ack applies only while the worker's status key still holds
-- exactly the value written when the job was taken (a fence: a worker taken
-- for dead and recovered records nothing twice). An applied ack deletes the
-- status key and, by kind:
--   'ok'    counts the job (globally here; per worker in the batched counts);
--   'fail'  also pushes the failure record `data` and counts the failure;
--   'back'  puts the payload back at the head of queue `data`, counts nothing;
--   'later' schedules the payload `data` seconds from now, counts nothing;
--   'retry' counts an attempt in node-resque's Retry plugin keys: with
--           attempts left, schedules the payload after the next delay and
--           counts a failure; else records the failure `data` as 'fail'.
-- `extra` (JSON or '') may carry keys to delete ({"del":[...]}), the retry
-- settings ({"retry":{key, fkey, limit, delays, ttl, info}}) and an
-- actionHero recurring re-enqueue ({"recur":{queue, payload, secs, ns}}).
--
-- ARGV: prefix, n_acks, {id, name, expected, kind, data, raw, extra} * n_acks,
--       n_counts, {id, name, successes} * n_counts, run_at, n_takes, {id, status_tail} * n_takes,
--       n_queues, {queue, queue_json} * n_queues,
--       n_limits, {remaining, n_patterns, pattern...} * n_limits, process
-- Returns: {paused (1: pause-all-workers, 2: this process is not registered),
--           {applied 1|0 per ack},
--           {slot, queue_index, job, status or "", class or ""} ...,
--           occupied: slots not taken into because their status key holds a value}
local SCAN_DEPTH = 100
local prefix = ARGV[1]
local i = 2
local n_acks = tonumber(ARGV[i]); i = i + 1
local applied = {}
-- Slots whose ack did not apply: their status key holds something else, so
-- nothing is taken into them.
local fenced = {}
local processed, failed = 0, 0
local now

-- Delayed-queue layout as node-resque's enqueueAt writes it (`ns_members`:
-- namespaced timestamps members, as node-resque 0.2 / actionHero 7 wrote).
local function schedule(payload, ts, ns_members)
  local member = 'delayed:' .. ts
  if ns_members then member = prefix .. member end
  redis.call('RPUSH', prefix .. 'delayed:' .. ts, payload)
  redis.call('SADD', prefix .. 'timestamps:' .. payload, member)
  redis.call('ZADD', prefix .. 'delayed_queue_schedule', ts, ts)
end

local function unix_now()
  if not now then now = tonumber(redis.call('TIME')[1]) end
  return now
end

for a = 1, n_acks do
  local id, name, expected, kind, data, raw, extra =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  local status_key = prefix .. 'worker:' .. id
  -- GETDEL is one call instead of GET + DEL; the rare fenced-out value is
  -- written back unchanged (atomically, within this script).
  local current = redis.call('GETDEL', status_key)
  if current == expected then
    local x = {}
    if extra ~= '' then x = cjson.decode(extra) end
    if kind == 'retry' then
      local r = x['retry']
      redis.call('SETNX', r['key'], -1)
      local n = redis.call('INCR', r['key'])
      redis.call('EXPIRE', r['key'], r['ttl'])
      redis.call('SETEX', r['fkey'], r['ttl'], r['info'])
      if r['limit'] - n - 1 <= 0 then
        redis.call('DEL', r['key'], r['fkey'])
        kind = 'fail'
      else
        local delays = r['delays']
        schedule(raw, unix_now() + delays[math.min(n + 1, #delays)], false)
        failed = failed + 1
        redis.call('INCR', prefix .. 'stat:failed:' .. id)
        redis.call('INCR', prefix .. 'stat:failed:' .. name)
      end
    end
    if kind == 'back' then
      redis.call('LPUSH', prefix .. 'queue:' .. data, raw)
    elseif kind == 'later' then
      schedule(raw, unix_now() + tonumber(data), false)
    elseif kind == 'ok' or kind == 'fail' then
      processed = processed + 1
      -- A success's per-worker count comes batched (see below).
      if kind == 'fail' then
        redis.call('INCR', prefix .. 'stat:processed:' .. id)
        redis.call('INCR', prefix .. 'stat:processed:' .. name)
        failed = failed + 1
        redis.call('RPUSH', prefix .. 'failed', data)
        redis.call('INCR', prefix .. 'stat:failed:' .. id)
        redis.call('INCR', prefix .. 'stat:failed:' .. name)
      end
    end
    if x['del'] then
      for _, key in ipairs(x['del']) do redis.call('DEL', key) end
    end
    local recur = x['recur']
    if recur then
      -- actionHero's re-enqueue after a run: drop queued and delayed copies,
      -- then schedule the next one.
      local payload = recur['payload']
      redis.call('LREM', prefix .. 'queue:' .. recur['queue'], 0, payload)
      local ts_key = prefix .. 'timestamps:' .. payload
      for _, member in ipairs(redis.call('SMEMBERS', ts_key)) do
        local key = member
        if string.sub(member, 1, #prefix) ~= prefix then key = prefix .. member end
        redis.call('LREM', key, 0, payload)
      end
      redis.call('DEL', ts_key)
      schedule(payload, unix_now() + recur['secs'], recur['ns'])
    end
    applied[a] = 1
  else
    if current then redis.call('SET', status_key, current) end
    applied[a] = 0
    fenced[id] = true
  end
end
if processed > 0 then redis.call('INCRBY', prefix .. 'stat:processed', processed) end
if failed > 0 then redis.call('INCRBY', prefix .. 'stat:failed', failed) end

-- Per-worker success counts, batched by the worker (at most a second
-- late): {id, name, count} * n. Two INCRBYs per slot and second instead of
-- two INCRs per job.
local n_counts = tonumber(ARGV[i]); i = i + 1
for c = 1, n_counts do
  local id, name, n = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  redis.call('INCRBY', prefix .. 'stat:processed:' .. id, n)
  redis.call('INCRBY', prefix .. 'stat:processed:' .. name, n)
end

local run_at = ARGV[i]; i = i + 1
local n_takes = tonumber(ARGV[i]); i = i + 1
local slots_at = i
i = i + 2 * n_takes
local n_queues = tonumber(ARGV[i]); i = i + 1
local queues_at = i
i = i + 2 * n_queues
local limits = {}
local n_limits = tonumber(ARGV[i] or '0'); i = i + 1
for l = 1, n_limits do
  local limit = {remaining = tonumber(ARGV[i]), patterns = {}}
  local n = tonumber(ARGV[i + 1])
  for p = 1, n do limit.patterns[p] = ARGV[i + 1 + p] end
  i = i + 2 + n
  limits[l] = limit
end

local function limit_of(class)
  if type(class) ~= 'string' then return nil end
  for _, limit in ipairs(limits) do
    for _, pattern in ipairs(limit.patterns) do
      if string.find(class, pattern) then return limit end
    end
  end
  return nil
end

local function used_up()
  for _, limit in ipairs(limits) do
    if limit.remaining <= 0 then return true end
  end
  return false
end

-- Decode a payload: well-formed (a JSON object) or not, and its class.
local function inspect(job)
  if not string.find(job, '^%s*{') then return false, nil end
  local ok, decoded = pcall(cjson.decode, job)
  if not ok or type(decoded) ~= 'table' then return false, nil end
  return true, decoded['class']
end

-- Without limits the class is not needed: a payload that starts with `{`
-- and ends with `}` is spliced in as is (the worker still parses it fully
-- and fails what is not JSON); only others are decoded. This saves a
-- decode per job on the hot path.
local function looks_like_object(job)
  return string.byte(job, 1) == 123 and string.byte(job, -1) == 125
end

local process = ARGV[i] or ''; i = i + 1

local paused = 0
local taken = {}
if n_takes > 0 then
  local pause = redis.call('GET', prefix .. 'pause-all-workers')
  if pause and string.lower(string.match(pause, '^%s*(.-)%s*$')) == 'true' then
    paused = 1
    n_takes = 0
  elseif process ~= '' and redis.call('HEXISTS', prefix .. 'ah-worker:processes', process) == 0 then
    -- This process was taken for dead and recovered: take nothing until it
    -- registers again, or jobs would sit in status keys nobody recovers.
    paused = 2
    n_takes = 0
  end
end
local q = 1
local heads = {}
local occupied = 0
for s = 1, n_takes do
  local id = ARGV[slots_at + 2 * (s - 1)]
  local tail = ARGV[slots_at + 2 * (s - 1) + 1]
  -- A status key the worker thinks free may still hold a job: an ack Redis
  -- lost (a failover, a restore). Never overwrite it; the worker resumes it.
  if not fenced[id] and redis.call('EXISTS', prefix .. 'worker:' .. id) == 1 then
    fenced[id] = true
    occupied = occupied + 1
  end
  if not fenced[id] then
    local job, well_formed, class
    while q <= n_queues and not job do
      local key = prefix .. 'queue:' .. ARGV[queues_at + 2 * (q - 1)]
      if not used_up() then
        job = redis.call('LPOP', key)
        if job then
          if n_limits == 0 and looks_like_object(job) then
            well_formed = true
          else
            well_formed, class = inspect(job)
          end
        end
      else
        for _, item in ipairs(redis.call('LRANGE', key, 0, SCAN_DEPTH - 1)) do
          local wf, c = inspect(item)
          local limit = limit_of(c)
          if not limit or limit.remaining > 0 then
            redis.call('LREM', key, 1, item)
            job, well_formed, class = item, wf, c
            break
          end
        end
      end
      if not job then q = q + 1 end
    end
    if not job then break end
    local limit = limit_of(class)
    if limit then limit.remaining = limit.remaining - 1 end
    local head = heads[q]
    if not head then
      head = '{"queue":' .. ARGV[queues_at + 2 * (q - 1) + 1] .. ',"run_at":"' .. run_at .. '","payload":'
      heads[q] = head
    end
    local status = ''
    if well_formed then
      redis.call('SET', prefix .. 'worker:' .. id, head .. job .. tail)
    else
      status = head .. cjson.encode(job) .. tail
      redis.call('SET', prefix .. 'worker:' .. id, status)
    end
    taken[#taken + 1] = s
    taken[#taken + 1] = q
    taken[#taken + 1] = job
    taken[#taken + 1] = status
    if type(class) == 'string' then taken[#taken + 1] = class else taken[#taken + 1] = '' end
  end
end
return {paused, applied, taken, occupied}
