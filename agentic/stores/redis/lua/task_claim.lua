-- Claim a task: ONE compare-and-set (after common.lua, task_lib.lua).
-- ARGV: heads, now, task id, agent id, lease seconds, job id
-- Reply: {'ok', task} | {'missing'} | {'conflict', task, unfinished dependency ids}
local now = clock(ARGV[BASE + 1])
local t = load(ARGV[BASE + 2])
if not t then
  return {'missing'}
end
local waiting = unfinished(t)
if t.status ~= 'pending' or #waiting > 0 then
  return {'conflict', flat(t), waiting}
end
t.status, t.claimed_by, t.job_id = 'in_progress', ARGV[BASE + 3], ARGV[BASE + 5]
t.claimed_at, t.updated_at = num(now), num(now)
t.lease_expires_at = num(now + tonumber(ARGV[BASE + 4]))
save(t, 'pending')
return {'ok', flat(t)}
