-- Settle the fate of a claim whose answer was lost (after common.lua, task_lib.lua):
-- made if the task carries its job id or retired it as made; otherwise the job id
-- is retired as withdrawn, so that a claim still on its way is refused when it lands.
-- ARGV: heads, task id, job id
-- Reply: {'made'} | {'withdrawn'} | {'missing'}
local t = load(ARGV[BASE + 1])
if not t then
  return {'missing'}
end
local job = ARGV[BASE + 2]
-- _tasks.made_as_far_as_known: the task carries the job id, or it is completed.
if (t.job_id or '') == job or t.status == 'completed' then
  return {'made'}
end
retire(t.id, job, '0')
if redis.call('HGET', HEAD.retired .. t.id, job) == '1' then
  return {'made'}
end
return {'withdrawn'}
