-- Create a task (after common.lua, task_lib.lua).
-- ARGV: heads, now, idempotency key ('' for none), then field, value pairs of the
-- prepared task (id set; created_at '' means now; status pending or blocked).
-- Reply: {'ok', task} | {'first', the task the key created} | {'exists'}
--      | {'missing', dependency id}
local now = clock(ARGV[BASE + 1])
local key = ARGV[BASE + 2]
local t = {}
for i = BASE + 3, #ARGV, 2 do
  t[ARGV[i]] = ARGV[i + 1]
end
if key ~= '' then
  local first = redis.call('HGET', HEAD.idempotency, key)
  if first then
    return {'first', flat(load(first))}
  end
end
if redis.call('EXISTS', HEAD.data .. t.id) == 1 then
  return {'exists'}
end
-- Failed dependencies, and the failed tasks blocking blocked ones, block it too.
local dependencies = cjson.decode(t.dependencies)
local blockers, missing = creation_blockers(dependencies)
if not blockers then
  return {'missing', missing}
end
if #blockers > 0 then
  t.status = 'blocked'
end
t.blockers = encode_list(blockers)
if t.created_at == '' then
  t.created_at = num(now)
end
t.updated_at = num(now)
save(t, nil)
redis.call('ZADD', HEAD.order .. RANK[t.priority], t.created_at, t.id)
for _, dep in ipairs(dependencies) do
  redis.call('SADD', HEAD.dependents .. dep, t.id)
end
if key ~= '' then
  redis.call('HSET', HEAD.idempotency, key, t.id)
end
return {'ok', flat(t)}
