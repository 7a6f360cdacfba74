-- An operator's retry of a failed task (after common.lua, log_lib.lua, task_lib.lua):
-- the task starts afresh (_tasks.rerun) and the tasks it blocked lose it from their
-- blockers, pending again once none is left (_tasks.unblock_dependents); each task
-- made pending records a task_requeued (_tasks.rerun_events). One call: all or none.
-- ARGV: heads, now, task id, the retried task's reason, an unblocked one's reason.
-- Reply: {'ok', task, unblocked ids} | {'missing'} | {'conflict', task}
local now = clock(ARGV[BASE + 1])
local t = load(ARGV[BASE + 2])
local reason, unblocked_reason = ARGV[BASE + 3], ARGV[BASE + 4]
if not t then
  return {'missing'}
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
t.reruns = tostring(tonumber(t.reruns or '0') + 1)
t.updated_at = num(now)
save(t, 'failed')
local events = {}
if t.status == 'pending' then
  events[1] = event('task_requeued', t, '', '', now, {reason = reason})
end
-- Breadth first through the tasks naming t among their blockers.
local queue, seen, head, unblocked = {t.id}, {[t.id] = true}, 1, {}
while head <= #queue do
  local members = redis.call('SMEMBERS', HEAD.dependents .. queue[head])
  head = head + 1
  for _, id in ipairs(members) do
    local d = not seen[id] and load(id)
    local names = d and cjson.decode(d.blockers) or {}
    if contains(names, t.id) then
      seen[id] = true
      queue[#queue + 1] = id
      if d.status == 'blocked' then
        local left = {}
        for _, name in ipairs(names) do
          if name ~= t.id then
            left[#left + 1] = name
          end
        end
        for _, name in ipairs(blockers) do
          if not contains(left, name) then
            left[#left + 1] = name
          end
        end
        d.blockers, d.updated_at = encode_list(left), num(now)
        if #left == 0 then
          d.status = 'pending'
          unblocked[#unblocked + 1] = id
          events[#events + 1] = event('task_requeued', d, '', '', now,
            {reason = unblocked_reason})
        end
        save(d, 'blocked')
      end
    end
  end
end
if LOG.seq ~= '' and #events > 0 then
  log_append(LOG.seq, LOG.stream, LOG.ids, events)
end
return {'ok', flat(t), unblocked}
