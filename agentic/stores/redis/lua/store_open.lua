-- store_open.lua: what a Redis store reads when it opens, in one call (no guard).
-- KEYS[1]: the store id key. ARGV[1]: an id to give the store when it has none, or
-- '' (a command that only reads: nothing is written); ARGV[2]: the head of the write
-- count keys ('{prefix}:store_count:', the id follows).
-- Reply: {id, count, went_back}, each false when there is none. A store with an id
-- and no count (new, or last written by an agentic that kept none) is given a count
-- of 1, unless it is marked as gone back (then no process may use it until an
-- operator accepts it).
local id = redis.call('GET', KEYS[1])
if not id and ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1])
  id = ARGV[1]
end
if not id then
  return {false, false, false}
end
local count_key = ARGV[2] .. id
local back = redis.call('GET', count_key .. ':went_back')
local count = redis.call('GET', count_key)
if not count and not back and ARGV[1] ~= '' then
  redis.call('SET', count_key, 1)
  count = 1
end
return {id, count, back}
