-- log_lib.lua: appending to the event log (EventLog.append), for log_append.lua and
-- for the task scripts that record a task's lifecycle with the change (an outbox).
-- entries: a list of {event id, body}, or {'', name} for an event named by the
-- offset it gets (name(offset) returns its id and body). Replies each event's
-- offset: the one it already had when its id is in the log, else the next.
-- The next offset follows both the counter and the stream's newest entry, so a lost
-- counter (evicted, deleted) cannot hand out an id XADD refuses; the counter is
-- written last, once, so a failure leaves nothing behind.
local function log_append(seq_key, stream_key, ids_key, entries)
  local last = tonumber(redis.call('GET', seq_key) or '0')
  local top = redis.call('XREVRANGE', stream_key, '+', '-', 'COUNT', 1)[1]
  if top then
    last = math.max(last, tonumber(string.match(top[1], '^(%d+)')))
  end
  local out, added, any = {}, {}, false
  for _, entry in ipairs(entries) do
    local id, body = entry[1], entry[2]
    -- an event to name by its offset (any id, '' included, is an id to dedupe on)
    local unnamed = type(body) == 'function'
    local offset = not unnamed and (added[id] or tonumber(redis.call('HGET', ids_key, id)))
    if not offset then
      last = last + 1
      offset = last
      if unnamed then
        id, body = body(offset)
      end
      -- %d: plain concatenation would print 1e+14 from the fifteenth digit on
      redis.call('XADD', stream_key, string.format('%d-0', offset), 'id', id, 'body', body)
      redis.call('HSET', ids_key, id, string.format('%d', offset))
      added[id], any = offset, true
    end
    out[#out + 1] = offset
  end
  if any then
    redis.call('SET', seq_key, string.format('%d', last))
  end
  return out
end
