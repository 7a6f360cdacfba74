-- log_trim.lua: EventLog.trim. KEYS: stream, ids. ARGV: keep.
-- The dropped events' ids leave the dedupe hash with them. Replies how many went.
local drop = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[1])
if drop <= 0 then
  return 0
end
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', drop)) do
  -- entry = {entry id, {'id', event id, 'body', json}}
  redis.call('HDEL', KEYS[2], entry[2][2])
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[1])
return drop
