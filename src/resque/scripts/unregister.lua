-- Remove worker registrations (see deregister.lua). A worker whose status
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
    deregister(prefix, id, name)
  end
end
return kept
