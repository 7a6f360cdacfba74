-- log_trim.lua: one step of EventLog.trim. KEYS: stream, ids. ARGV: keep, step, the
-- id of the last entry that may go ('+': any). Drops at most `step` of the oldest
-- events beyond the newest `keep`, none past that entry (the caller repeats while a
-- step was full), and their ids from the dedupe hash. Replies how many went.
local length = redis.call('XLEN', KEYS[1])
local drop = math.min(length - tonumber(ARGV[1]), tonumber(ARGV[2]))
if drop <= 0 then
  return 0
end
local entries = redis.call('XRANGE', KEYS[1], '-', ARGV[3], 'COUNT', drop)
for _, entry in ipairs(entries) do
  -- entry = {entry id, {'id', event id, 'body', json}}
  redis.call('HDEL', KEYS[2], entry[2][2])
end
-- The oldest entries are the ones read: MAXLEN drops exactly them.
redis.call('XTRIM', KEYS[1], 'MAXLEN', length - #entries)
return #entries
