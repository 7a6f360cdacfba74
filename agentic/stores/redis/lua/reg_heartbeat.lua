-- Stamp an agent's heartbeat (and load); status follows load, and an offline
-- agent is back online. An unknown or deregistered agent gets nil and nothing is
-- written: a heartbeat never resurrects a deregistered agent (go-agentic defect 14).
-- KEYS: agent hash, beats zset
-- ARGV: now, agent id, load ('' keeps the current load)
local max_load = redis.call('HGET', KEYS[1], 'max_load')
if not max_load then
  return false
end
local now = num(clock(ARGV[1]))
local load = ARGV[3]
if load == '' then
  load = redis.call('HGET', KEYS[1], 'current_load')
end
-- base.status_for_load: at max_load (when limited) an agent is busy
local status = 'available'
if tonumber(max_load) > 0 and tonumber(load) >= tonumber(max_load) then
  status = 'busy'
end
redis.call('HSET', KEYS[1], 'last_heartbeat', now, 'current_load', load, 'status', status)
redis.call('ZADD', KEYS[2], now, ARGV[2])
return redis.call('HGETALL', KEYS[1])
