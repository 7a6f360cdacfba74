-- Partial update of a task (after common.lua, task_lib.lua).
-- ARGV: heads, now, task id, target status ('' = unchanged), dead-letter reason,
-- then field, value pairs to set (progress, notes, retry fields).
-- Reply: {'ok', task} | {'missing'} | {'conflict', task}
local now = clock(ARGV[BASE + 1])
local t = load(ARGV[BASE + 2])
local target, reason = ARGV[BASE + 3], ARGV[BASE + 4]
if not t then
  return {'missing'}
end
local old = t.status
local final = old == 'completed' or old == 'failed'
-- The status changes an update may make (see _tasks.updated); the others are
-- claim / release / complete's, and final tasks stay final.
local allowed = target == '' or target == old
  or (target == 'failed' and not final)
  or (old == 'pending' and target == 'blocked')
  or (old == 'blocked' and target == 'pending' and #cjson.decode(t.blockers) == 0)
-- Of a final task only the notes may change.
for i = BASE + 5, #ARGV, 2 do
  if final and ARGV[i] ~= 'notes' then
    allowed = false
  end
end
if not allowed then
  return {'conflict', flat(t)}
end
local before = before_change(t)
for i = BASE + 5, #ARGV, 2 do
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
