-- Take, extend or drop a named lease (after common.lua): base.AgentRegistry.hold_lease.
-- KEYS: the lease hash (holder, until)
-- ARGV: now, holder, ttl seconds ('' = drop)
-- Reply: who holds the lease after the call ('' when dropped or nobody)
local now = clock(ARGV[1])
local holder, ttl = ARGV[2], ARGV[3]
local current = redis.call('HMGET', KEYS[1], 'holder', 'until')
if ttl == '' then
  if current[1] == holder then
    redis.call('DEL', KEYS[1])
  end
  return ''
end
if current[1] and current[1] ~= holder and tonumber(current[2]) > now then
  return current[1]
end
redis.call('HSET', KEYS[1], 'holder', holder, 'until', num(now + tonumber(ttl)))
if ARGV[1] == '' then
  -- On the server's clock the key itself can expire with the lease (an hour later,
  -- so a lease is never lost to rounding): nothing is left behind by a dead holder.
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ttl)) + 3600)
end
return holder
