-- guard.lua: the first lines of every store script (Script in _conn.py puts them
-- there). KEYS[1] is the store id key and the last of ARGV the id this process saw
-- when it opened the store; both are taken off, so the script's own keys and
-- arguments are as before (the id goes last: taking off the first argument would
-- move every other one, a microsecond on a reserve's 20). When the key is gone (a restart without persistence, a
-- FLUSHDB, a failover to a replica that lagged) or holds another id, the script
-- writes nothing and fails: the process would otherwise go on in an empty store,
-- with its tasks, usage and reservations lost and every quota back at zero.
local store_id = redis.call('GET', table.remove(KEYS, 1))
local seen_id = table.remove(ARGV)
if store_id ~= seen_id then
  return redis.error_reply('AGENTIC_STORE_LOST ' .. seen_id .. ' ' .. (store_id or ''))
end
