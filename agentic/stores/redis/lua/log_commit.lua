-- log_commit.lua: EventLog.commit. KEYS: consumers. ARGV: consumer, offset.
-- A position only moves forward.
local offset = tonumber(ARGV[2])
if offset > tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
