-- Remove an agent: its hash, id and heartbeat entry together. 0 when unknown.
-- KEYS: agent hash, ids set, beats zset
-- ARGV: agent id
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
