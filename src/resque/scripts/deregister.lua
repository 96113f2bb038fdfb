-- Shared by unregister.lua and recover.lua (prepended to each): remove one
-- slot's registration, exactly the keys Ruby Resque's unregister_worker and
-- node-resque's untrack delete (the status key is the caller's business).
local function deregister(prefix, id, name)
  redis.call('SREM', prefix .. 'workers', id)
  redis.call('HDEL', prefix .. 'workers:heartbeat', id)
  redis.call('DEL', prefix .. 'worker:' .. id .. ':started',
    prefix .. 'worker:ping:' .. name,
    prefix .. 'stat:processed:' .. id, prefix .. 'stat:failed:' .. id,
    prefix .. 'stat:processed:' .. name, prefix .. 'stat:failed:' .. name)
end
