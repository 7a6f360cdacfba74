-- common.lua: the prelude of every agentic script.
--
-- Replies and stored values are strings built by num(): a Lua number returned
-- to Redis would be truncated to an integer, and redis.call() formats numbers
-- with 14 significant digits; %.17g round-trips every double exactly. Whole
-- numbers below 1e17 (every count and amount) print the same digits with %d
-- (-0 as 0), in half the time; x % 1 is NaN for infinities and NaN: %.17g.

-- Library globals (string, math, cjson) are out of reach while a Redis Function
-- library loads, so string.format is looked up at each call (see Script in _conn.py).
local format
-- per call {
format = string.format
-- } per call

local function num(x)
  if x % 1 == 0 and x > -1e17 and x < 1e17 then
    return format('%d', x)
  end
  return format('%.17g', x)
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
