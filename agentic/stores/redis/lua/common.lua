-- common.lua: the prelude of every agentic script.
--
-- Replies and stored values are strings built by num(): a Lua number returned
-- to Redis would be truncated to an integer, and redis.call() formats numbers
-- with 14 significant digits; %.17g round-trips every double exactly.

local function num(x)
  return string.format('%.17g', x)
end

-- "now" in epoch seconds: the argument when the caller injects a clock (tests),
-- else the server's TIME, so every client machine agrees on one clock.
local function clock(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return tonumber(arg)
end
