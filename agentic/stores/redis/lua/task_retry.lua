-- An operator's retry of a failed task (after common.lua, log_lib.lua, task_lib.lua):
-- the task starts afresh (_tasks.rerun) and the tasks below it find their blockers
-- again, pending once none is left (_tasks.unblock_dependents); each task
-- made pending records a task_requeued (_tasks.rerun_events). One call: all or none.
-- ARGV: heads, now, task id, the retried task's reason, an unblocked one's reason,
-- the reruns count the asker saw ('' for none: _tasks.retry_wanted).
-- Reply: {'ok', task, unblocked ids} | {'missing'} | {'conflict', task}
--      | {'repeated', task} (retried since that count: nothing changes)
local now = clock(ARGV[BASE + 1])
local t = load(ARGV[BASE + 2])
local reason, unblocked_reason = ARGV[BASE + 3], ARGV[BASE + 4]
local seen = tonumber(ARGV[BASE + 5])
if not t then
  return {'missing'}
end
if seen then
  local reruns = tonumber(t.reruns or '0')
  if seen < reruns then
    return {'repeated', flat(t)}
  elseif seen > reruns then
    return {'conflict', flat(t)}
  end
end
if t.status ~= 'failed' then
  return {'conflict', flat(t)}
end
local blockers = creation_blockers(cjson.decode(t.dependencies))
-- the last attempt's job id may not claim it again (a release retires it alike)
retire(t.id, t.job_id or '', '1')
unclaim(t)
t.status = #blockers > 0 and 'blocked' or 'pending'
t.blockers = encode_list(blockers)
t.retry_count, t.last_attempt, t.next_attempt_at = '0', '', ''
t.fail_reason, t.result, t.progress, t.job_id = '', '', '0', ''
t.reruns = num(tonumber(t.reruns or '0') + 1)
t.updated_at = num(now)
save(t, 'failed')
local events = {}
if t.status == 'pending' then
  events[1] = event('task_requeued', t, '', '', now, {reason = reason})
end
-- The tasks below t (its dependents, transitively), breadth first, each one's own
-- dependents sorted by id.
local below, children, order, head = {}, {}, {t.id}, 1
while head <= #order do
  local parent = order[head]
  head = head + 1
  local found = redis.call('SMEMBERS', HEAD.dependents .. parent)
  table.sort(found)
  children[parent] = found
  for _, id in ipairs(found) do
    if not below[id] then
      below[id] = load(id)
      order[#order + 1] = id
    end
  end
end
-- Kahn's order, as _tasks.unblock_dependents: each after its dependencies below t,
-- a blocked one (not a hold) finding its blockers again from them as stored by then.
local waits = {}
for id, d in pairs(below) do
  local n = 0
  for _, dep in ipairs(cjson.decode(d.dependencies)) do
    if below[dep] then
      n = n + 1
    end
  end
  waits[id] = n
end
local ready, first, unblocked = {}, 1, {}
for _, id in ipairs(children[t.id]) do
  if waits[id] == 0 then
    ready[#ready + 1] = id
  end
end
while first <= #ready do
  local id = ready[first]
  first = first + 1
  local d = below[id]
  local names = cjson.decode(d.blockers)
  if d.status == 'blocked' and #names > 0 then
    local found = creation_blockers(cjson.decode(d.dependencies))
    local same = #found == #names
    for _, name in ipairs(found) do
      same = same and contains(names, name)
    end
    if not same then
      d.blockers, d.updated_at = encode_list(found), num(now)
      if #found == 0 then
        d.status = 'pending'
        unblocked[#unblocked + 1] = id
        events[#events + 1] = event('task_requeued', d, '', '', now,
          {reason = unblocked_reason})
      end
      save(d, 'blocked')
    end
  end
  for _, child in ipairs(children[id]) do
    waits[child] = waits[child] - 1
    if waits[child] == 0 then
      ready[#ready + 1] = child
    end
  end
end
if LOG.seq ~= '' and #events > 0 then
  log_append(LOG.seq, LOG.stream, LOG.ids, events)
end
return {'ok', flat(t), unblocked}
