-- Settle the fate of a claim whose answer was lost (after common.lua, task_lib.lua):
-- made if the task carries its job id; otherwise the job id is retired, so that a
-- claim still on its way is refused when it arrives.
-- ARGV: heads, task id, job id
-- Reply: {'made'} | {'withdrawn'} | {'missing'}
local t = load(ARGV[BASE + 1])
if not t then
  return {'missing'}
end
local job = ARGV[BASE + 2]
if (t.job_id or '') == job then
  return {'made'}
end
retire(t, job)
redis.call('HSET', HEAD.data .. t.id, 'retired_jobs', t.retired_jobs)
return {'withdrawn'}
