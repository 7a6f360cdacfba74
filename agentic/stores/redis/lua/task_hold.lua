-- renew / release / complete a claimed task (after common.lua, task_lib.lua).
-- ARGV: heads, now, task id, op, agent id ('' = whoever holds it), then per op:
--   renew:    lease seconds
--   complete: '1' success / '0' failure, TaskResult JSON, failure reason,
--             retry_at ('' = at once)
-- Reply: {'ok', task} | {'missing'} | {'conflict', task}
local now = clock(ARGV[BASE + 1])
local t = load(ARGV[BASE + 2])
local op, agent = ARGV[BASE + 3], ARGV[BASE + 4]
if not t then
  return {'missing'}
end
if t.status ~= 'in_progress' or (agent ~= '' and t.claimed_by ~= agent) then
  return {'conflict', flat(t)}
end
if op == 'renew' then
  t.lease_expires_at, t.updated_at = num(now + tonumber(ARGV[BASE + 5])), num(now)
elseif op == 'release' then
  unclaim(t)
  t.status, t.updated_at = 'pending', num(now)
elseif ARGV[BASE + 5] == '1' then
  t.status, t.result, t.progress = 'completed', ARGV[BASE + 6], '100'
  t.lease_expires_at, t.updated_at = '', num(now)
else
  failed_attempt(t, now, ARGV[BASE + 7], ARGV[BASE + 8], ARGV[BASE + 6])
end
finish(t, 'in_progress', now)
return {'ok', flat(t)}
