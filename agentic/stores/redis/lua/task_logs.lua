-- Append log lines to an existing task (after common.lua, task_lib.lua).
-- ARGV: heads, task id, lines...
-- Reply: the offset after the last line, or -1 when the task does not exist
local id = ARGV[BASE + 1]
if redis.call('EXISTS', HEAD.data .. id) == 0 then
  return -1
end
local key = HEAD.logs .. id
local length = redis.call('LLEN', key)
-- In chunks: unpack() of thousands of values would overflow Lua's C stack.
for first = BASE + 2, #ARGV, 1000 do
  length = redis.call('RPUSH', key, unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
return length
