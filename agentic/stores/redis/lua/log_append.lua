-- log_append.lua: EventLog.append. KEYS: seq, stream, ids (EventLogKeys order).
-- ARGV: event id, body, event id, body, ... Replies each event's offset: the one it
-- already had when its id is in the log, else the next (INCR, never reused).
local out = {}
for i = 1, #ARGV, 2 do
  local offset = redis.call('HGET', KEYS[3], ARGV[i])
  if not offset then
    offset = redis.call('INCR', KEYS[1])
    redis.call('XADD', KEYS[2], offset .. '-0', 'id', ARGV[i], 'body', ARGV[i + 1])
    redis.call('HSET', KEYS[3], ARGV[i], offset)
  end
  out[#out + 1] = tonumber(offset)
end
return out
