-- Treat every expired lease as a failed attempt (after common.lua, task_lib.lua).
-- The leases zset holds in-progress tasks only, so this reads the expired ones
-- and nothing else: O(expired). Order: expiry, then id.
-- ARGV: heads, now
-- Reply: the changed tasks
local now = clock(ARGV[BASE + 1])
local changed = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', HEAD.leases, '-inf', num(now))) do
  local t = load(id)
  if t and t.status == 'in_progress' then
    local before = before_change(t)
    local reason = 'lease of agent ' .. t.claimed_by .. ' expired'
    failed_attempt(t, now, reason, '', nil)
    local blocked = finish(t, 'in_progress', now)
    record(before, t, now, reason, blocked)
    changed[#changed + 1] = flat(t)
  else
    redis.call('ZREM', HEAD.leases, id)
  end
end
return changed
