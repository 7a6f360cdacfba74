-- guard.lua: the first lines of every store script (Script in _conn.py puts them
-- there). KEYS[1] is the store id key; KEYS[2] the store's write count, a key named
-- by the id this process saw when it opened the store; the last of ARGV the highest
-- count this process has seen, negated for a call that only reads. All three are
-- taken off, so the script's own keys and arguments are as before (ARGV from its
-- end: taking off the first argument would move every other one).
--
-- A call that writes counts itself (INCR), one that reads reads the count (GET): one
-- command either way, in place of the GET of the store id it replaces. When the
-- count's key is gone (a restart without persistence, a FLUSHDB, a store replaced:
-- its count has another id in its key) or the count is below the mark (a failover to
-- a replica that had not caught up, a restored backup: the writes since are lost),
-- the script undoes its INCR, writes nothing else and fails: the process would
-- otherwise go on in a store that lost its tasks, usage and reservations. A count
-- gone back is marked (KEYS[2] .. ':went_back': the count found and the mark) and its
-- key deleted, so that every process refuses the store from then on, those that had
-- seen none of the lost writes too, until an operator accepts it as it is
-- (store_accept.lua). The script's reply is then {count, its own reply}.
local id_key = table.remove(KEYS, 1)
local count_key = table.remove(KEYS, 1)
local mark = tonumber(table.remove(ARGV))
local count, before
if mark < 0 then
  mark = -mark
  count = tonumber(redis.call('GET', count_key))
  before = count
else
  count = redis.call('INCR', count_key)
  before = count - 1
end
if not before or before < mark or before < 1 then
  if count ~= before then -- this call's INCR: undone (a count of 0 was none)
    if before == 0 then
      redis.call('DEL', count_key)
      before = nil
    else
      redis.call('DECR', count_key)
    end
  end
  local found = redis.call('GET', id_key)
  local back_key = count_key .. ':went_back'
  local back = redis.call('GET', back_key)
  if found and not back and string.sub(count_key, -#found - 1) == ':' .. found then
    back = (before and string.format('%d', before) or '') .. ' ' .. string.format('%d', mark)
    redis.call('SET', back_key, back)
    redis.call('DEL', count_key)
  end
  return redis.error_reply('AGENTIC_STORE_LOST ' .. (found or '') .. ' ' .. (back or ''))
end
