-- quota_extend.lua (after common.lua, quota_lib.lua): _engine.extend.
-- arg: job id, default reservation ttl (the lifetime of a reservation stored before
-- its 'ttl' field existed)
-- Replies: {'extended', agent, model, tokens, cost, created_at, expires_at}
-- | {'not found'} (settled, unreserved, expired: a reservation past its expiry is
-- swept first, so it is gone too)

-- quota.extended_expiry: now plus the reservation's own lifetime, never earlier.
local function extended_expiry(expires_at, ttl, default_ttl)
  local lifetime = default_ttl
  if ttl > 0 then
    lifetime = ttl
  end
  return math.max(expires_at, NOW + lifetime)
end

sweep()
local job, default_ttl = arg(1), tonumber(arg(2))
local held = get_held(job)
if not held then
  return {'not found'}
end
local ttl = stored(redis.call('HGET', K.held .. job, 'ttl'), 0)
local expires = extended_expiry(held.expires_at, ttl, default_ttl)
local expires_text = num(held.expires_at)
if expires ~= held.expires_at then
  expires_text = num(expires)
  redis.call('HSET', K.held .. job, 'expires_at', expires_text)
  redis.call('ZADD', K.expiry, expires_text, job)  -- the index reserve's sweep reads
end
return {'extended', held.agent, held.model, num(held.tokens), num(held.cost),
  num(held.created_at), expires_text}
