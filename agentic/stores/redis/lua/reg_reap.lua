-- Mark offline every online agent whose last heartbeat is older than ttl and
-- return their ids. The beats zset holds only online agents, so this reads the
-- stale ones and nothing else: O(stale), not O(agents).
-- KEYS: beats zset
-- ARGV: now, ttl seconds, agent hash head
local cutoff = '(' .. num(clock(ARGV[1]) - tonumber(ARGV[2]))
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
local reaped = {}
for _, id in ipairs(stale) do
  local key = ARGV[3] .. id
  local status = redis.call('HGET', key, 'status')
  if status and status ~= 'offline' then
    redis.call('HSET', key, 'status', 'offline')
    reaped[#reaped + 1] = id
  end
end
if #stale > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
end
return reaped
