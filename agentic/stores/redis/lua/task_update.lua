-- Partial update of a task (after common.lua, task_lib.lua).
-- ARGV: heads, now, task id, target status ('' = unchanged), dead-letter reason,
-- the reruns and retry count of the pending task the caller read ('' '' for no
-- condition: _tasks.require_seen), then field, value pairs to set (progress,
-- notes, retry fields).
-- Reply: {'ok', task} | {'missing'} | {'conflict', task}
local now = clock(ARGV[BASE + 1])
local t = load(ARGV[BASE + 2])
local target, reason = ARGV[BASE + 3], ARGV[BASE + 4]
local seen_reruns, seen_count = tonumber(ARGV[BASE + 5]), tonumber(ARGV[BASE + 6])
local FIELDS = BASE + 7
if not t then
  return {'missing'}
end
local old = t.status
-- Only while the task is still the pending one the caller read: the same run, the
-- same failed attempts counted in it.
if seen_reruns and (old ~= 'pending' or tonumber(t.reruns or '0') ~= seen_reruns
    or tonumber(t.retry_count or '0') ~= seen_count) then
  return {'conflict', flat(t)}
end
local final = old == 'completed' or old == 'failed'
-- The status changes an update may make (see _tasks.updated); the others are
-- claim / release / complete's, and final tasks stay final.
local allowed = target == '' or target == old
  or (target == 'failed' and not final)
  or (old == 'pending' and target == 'blocked')
  or (old == 'blocked' and target == 'pending' and #cjson.decode(t.blockers) == 0)
-- Of a final task only the notes may change.
for i = FIELDS, #ARGV, 2 do
  if final and ARGV[i] ~= 'notes' then
    allowed = false
  end
end
if not allowed then
  return {'conflict', flat(t)}
end
local before = before_change(t)
for i = FIELDS, #ARGV, 2 do
  t[ARGV[i]] = ARGV[i + 1]
end
t.updated_at = num(now)
if target == 'failed' and old ~= 'failed' then
  dead_letter(t, now, reason)
elseif target ~= '' then
  t.status = target
end
local blocked = finish(t, old, now)
record(before, t, now, '', blocked)
return {'ok', flat(t)}
