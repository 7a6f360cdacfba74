-- Claim a task: ONE compare-and-set (after common.lua, task_lib.lua).
-- ARGV: heads, now, task id, agent id, lease seconds, job id
-- Reply: {'ok', task} | {'missing'} | {'conflict', task, unfinished dependency ids}
-- | {'spent', task} (the job id already had its attempt, or was withdrawn)
local now = clock(ARGV[BASE + 1])
local t = load(ARGV[BASE + 2])
if not t then
  return {'missing'}
end
local agent, job = ARGV[BASE + 3], ARGV[BASE + 5]
-- A repeat of the claim that holds the task: answered as made (_tasks.claim_repeat).
if job ~= '' and t.status == 'in_progress' and t.job_id == job and t.claimed_by == agent then
  return {'ok', flat(t)}
end
local waiting = unfinished(t)
if t.status ~= 'pending' or #waiting > 0 then
  return {'conflict', flat(t), waiting}
end
if job ~= '' and spent_job(t, job) then
  return {'spent', flat(t)}
end
retire(t.id, t.job_id or '', '1')  -- the claim this one replaces was made
local before = before_change(t)
t.status, t.claimed_by, t.job_id = 'in_progress', agent, job
t.claimed_at, t.updated_at = num(now), num(now)
t.lease_expires_at = num(now + tonumber(ARGV[BASE + 4]))
t.lease_seconds = num(tonumber(ARGV[BASE + 4]))
save(t, 'pending')
record(before, t, now, '')
return {'ok', flat(t)}
