-- Create a task (after common.lua, task_lib.lua).
-- ARGV: heads, now, idempotency key ('' for none), then field, value pairs of the
-- prepared task (id set; created_at '' means now; status pending or blocked).
-- Reply: {'ok', task} | {'exists'} | {'missing', dependency id}
local now = clock(ARGV[BASE + 1])
local key = ARGV[BASE + 2]
local t = {}
for i = BASE + 3, #ARGV, 2 do
  t[ARGV[i]] = ARGV[i + 1]
end
if key ~= '' then
  local first = redis.call('HGET', HEAD.idempotency, key)
  if first then
    return {'ok', flat(load(first))}
  end
end
if redis.call('EXISTS', HEAD.data .. t.id) == 1 then
  return {'exists'}
end
-- Failed dependencies, and the failed tasks blocking blocked ones, block it too.
local dependencies, blockers = cjson.decode(t.dependencies), {}
for _, dep in ipairs(dependencies) do
  local d = load(dep)
  if not d then
    return {'missing', dep}
  end
  local found = {}
  if d.status == 'failed' then
    found = {dep}
  elseif d.status == 'blocked' then
    found = cjson.decode(d.blockers)
  end
  for _, id in ipairs(found) do
    if not contains(blockers, id) then
      blockers[#blockers + 1] = id
    end
  end
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
