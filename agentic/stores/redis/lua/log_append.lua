-- log_append.lua: EventLog.append. KEYS: seq, stream, ids (EventLogKeys order).
-- ARGV: event id, body, event id, body, ... Replies each event's offset: the one it
-- already had when its id is in the log, else the next.
-- The next offset follows both the counter and the stream's newest entry, so a lost
-- counter (evicted, deleted) cannot hand out an id XADD refuses; the counter is
-- written last, once, so a failure leaves nothing behind.
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if top then
  last = math.max(last, tonumber(string.match(top[1], '^(%d+)')))
end
local out, added = {}, {}
for i = 1, #ARGV, 2 do
  local offset = added[ARGV[i]] or tonumber(redis.call('HGET', KEYS[3], ARGV[i]))
  if not offset then
    last = last + 1
    offset = last
    -- %d: plain concatenation would print 1e+14 from the fifteenth digit on
    redis.call('XADD', KEYS[2], string.format('%d-0', offset), 'id', ARGV[i], 'body', ARGV[i + 1])
    added[ARGV[i]] = offset
  end
  out[#out + 1] = offset
end
for id, offset in pairs(added) do
  redis.call('HSET', KEYS[3], id, string.format('%d', offset))
end
if next(added) then
  redis.call('SET', KEYS[1], string.format('%d', last))
end
return out
