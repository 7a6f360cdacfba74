-- renew / release / complete a claimed task (after common.lua, task_lib.lua).
-- ARGV: heads, now, task id, op, agent id ('' = whoever holds it), job fence
-- ('' = any claim, else '=' .. the job id the claim must have been made under, so
-- that an empty job id can be asked for), then per op:
--   renew:    lease seconds
--   release:  the reason ('' for none)
--   complete: '1' success / '0' failure, TaskResult JSON, failure reason,
--             retry_at ('' = at once)
-- Reply: {'ok', task} | {'missing'} | {'conflict', task}
local now = clock(ARGV[BASE + 1])
local t = load(ARGV[BASE + 2])
local op, agent, fence = ARGV[BASE + 3], ARGV[BASE + 4], ARGV[BASE + 5]
if not t then
  return {'missing'}
end
-- The fence refuses a stale attempt: the task was claimed again (maybe by the same
-- agent) since the claim this report belongs to. A record written before job ids
-- existed has no job_id field: it reads as ''.
if t.status ~= 'in_progress' or (agent ~= '' and t.claimed_by ~= agent)
    or (fence ~= '' and '=' .. (t.job_id or '') ~= fence) then
  return {'conflict', flat(t)}
end
local before = before_change(t)
local reason = ''
if op == 'renew' then
  t.lease_expires_at, t.updated_at = num(now + tonumber(ARGV[BASE + 6])), num(now)
  t.lease_seconds = num(tonumber(ARGV[BASE + 6]))
elseif op == 'release' then
  -- _tasks.given_back: the releaser deals with the claim's reservation, and its
  -- job id may not claim the task again.
  retire(t.id, t.job_id or '', '1')
  reason = ARGV[BASE + 6]
  unclaim(t)
  t.status, t.job_id, t.updated_at = 'pending', '', num(now)
elseif ARGV[BASE + 6] == '1' then
  t.status, t.result, t.progress = 'completed', ARGV[BASE + 7], '100'
  t.lease_expires_at, t.lease_seconds, t.updated_at = '', '', num(now)
else
  reason = ARGV[BASE + 8]
  failed_attempt(t, now, reason, ARGV[BASE + 9], ARGV[BASE + 7])
end
local blocked = finish(t, 'in_progress', now)
record(before, t, now, reason, blocked)
return {'ok', flat(t)}
