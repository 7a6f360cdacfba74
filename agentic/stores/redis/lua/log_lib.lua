-- log_lib.lua: appending to the event log (EventLog.append), for log_append.lua and
-- for the scripts that record events with the change they tell (an outbox): the
-- task scripts (a task's lifecycle), the quota settle (usage_recorded).
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

-- Epoch seconds as the ISO-8601 UTC time an Event's JSON holds, as the Python stores
-- write it: 2026-01-02T03:04:05Z, with .ffffff when there are microseconds. The
-- date is civil_from_days (H. Hinnant's proleptic Gregorian calendar): Redis's Lua
-- has no os.date.
local function iso_time(now)
  local secs = math.floor(now)
  -- to the nearest microsecond, a tie to the even one, as datetime.fromtimestamp
  local exact = (now - secs) * 1000000
  local micros = math.floor(exact)
  local half = exact - micros
  if half > 0.5 or (half == 0.5 and micros % 2 == 1) then
    micros = micros + 1
  end
  if micros >= 1000000 then
    secs, micros = secs + 1, micros - 1000000
  end
  local days, rest = math.floor(secs / 86400), secs % 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  local out = format('%04d-%02d-%02dT%02d:%02d:%02d', year, month, day,
    math.floor(rest / 3600), math.floor(rest % 3600 / 60), rest % 60)
  if micros > 0 then
    out = out .. format('.%06d', micros)
  end
  return out .. 'Z'
end
