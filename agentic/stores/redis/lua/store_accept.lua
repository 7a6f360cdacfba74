-- store_accept.lua: an operator accepts a store marked as gone back as it now is
-- (`agentic admin accept-store`; no guard). KEYS[1]: the store id key. ARGV[1]: the
-- head of the write count keys. The count is set past any a running process can have
-- seen (the count found, or the mark that found it, and 2^40 writes on: the store
-- would have to have lost a trillion writes), so the running processes go on, and
-- the mark is removed. Reply: {id, went_back}, each false when there is none (no
-- store; a store not marked: nothing is changed).
local id = redis.call('GET', KEYS[1])
if not id then
  return {false, false}
end
local count_key = ARGV[1] .. id
local back = redis.call('GET', count_key .. ':went_back')
if not back then
  return {id, false}
end
local found, seen = string.match(back, '^(%d*) (%d+)$')
local count = math.max(tonumber(found) or 0, tonumber(seen) or 0, tonumber(redis.call('GET', count_key)) or 0)
redis.call('SET', count_key, string.format('%d', count + 2 ^ 40))
redis.call('DEL', count_key .. ':went_back')
return {id, back}
