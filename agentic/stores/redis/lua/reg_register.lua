-- Register (upsert) one agent, keeping its first registered_at; registering
-- counts as a heartbeat.
-- KEYS: agent hash, ids set, beats zset
-- ARGV: now, agent id, doc JSON, current_load, max_load, status
local now = num(clock(ARGV[1]))
local registered = redis.call('HGET', KEYS[1], 'registered_at') or now
redis.call('HSET', KEYS[1], 'doc', ARGV[3], 'current_load', ARGV[4], 'max_load', ARGV[5],
  'status', ARGV[6], 'last_heartbeat', now, 'registered_at', registered)
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[2])
return {registered, now}
