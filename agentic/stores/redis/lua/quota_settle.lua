-- quota_settle.lua (after common.lua, quota_lib.lua, log_lib.lua, quota_log.lua):
-- _engine.settle.
-- arg: job id, tokens_in, tokens_out, outcome, agent id ('' = unknown), model,
-- retention of settled job ids in seconds, ending (base.Ending), task id ('' = none,
-- for the usage_recorded event a recording store records): 'settle' charges
-- and records; 'unreserve' (the job never ran) also takes back its job and its
-- request in the hour; 'expire' frees the hold as its expiry would. These two
-- record nothing, so a settle that comes later still charges. 'withdraw' (a
-- reserve whose answer was lost) undoes as 'unreserve' when held, and held or not
-- keeps the job id settled (no event), so a reserve arriving later is a conflict.
-- Replies: {'settled' or 'duplicate', agent, model, outcome, tokens charged,
-- cost charged, previous status, status} | {'not found'}
local SETTLED_FIELDS = {'agent', 'model', 'outcome', 'charged', 'cost', 'previous', 'status'}

-- Remember a settled (or withdrawn) job id; forget those older than the retention
-- (_engine._keep).
local function keep(job, settled, retention)
  local fields = {}
  for i, name in ipairs(SETTLED_FIELDS) do
    fields[#fields + 1] = name
    fields[#fields + 1] = settled[i]
  end
  redis.call('HSET', K.settled .. job, unpack(fields))
  redis.call('ZADD', K.settled_at, NOW_TEXT, job)
  local before = '(' .. num(NOW - retention)
  local expired = redis.call('ZRANGEBYSCORE', K.settled_at, '-inf', before)
  for _, old in ipairs(expired) do
    redis.call('DEL', K.settled .. old)
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', K.settled_at, '-inf', before)
  end
end

-- quota.charged_tokens
local function charged_tokens(outcome, tokens_in, tokens_out, failure_charge)
  local total = tokens_in + tokens_out
  if outcome == 'job_completed' then
    return total
  end
  if outcome == 'job_failed' then
    if failure_charge == 'full' then
      return total
    end
    return total - math.floor(total / 2)
  end
  return 0
end

-- quota.cost_microcents
local function cost_microcents(quota, tokens_in, tokens_out)
  if not quota then
    return 0
  end
  return math.floor(tokens_in * quota.input_price + tokens_out * quota.output_price + 0.5)
end

-- floor(a * b / c) exactly, for integers a, b >= 0 and c > 0 below 2^52 whose
-- result is below 2^53. a * b itself may pass 2^53, where doubles stop being
-- exact, so multiply bit by bit keeping a * (bits of b so far) = q * c + r, r < c.
local function muldiv(a, b, c)
  local qa = math.floor(a / c)
  local ra = a - qa * c
  local q, r = 0, 0
  local bit = 1
  while bit * 2 <= b do
    bit = bit * 2
  end
  while bit >= 1 do
    q, r = 2 * q, 2 * r
    if r >= c then
      q, r = q + 1, r - c
    end
    if b >= bit then
      b = b - bit
      q, r = q + qa, r + ra
      if r >= c then
        q, r = q + 1, r - c
      end
    end
    bit = bit / 2
  end
  return q
end

-- quota.share_of_cost
local function share_of_cost(full_cost, charged, total)
  if total <= 0 then
    return 0
  end
  return muldiv(full_cost, charged, total)
end

sweep()
local job, tokens_in, tokens_out = arg(1), tonumber(arg(2)), tonumber(arg(3))
local outcome, agent_arg, model_arg, retention = arg(4), arg(5), arg(6), tonumber(arg(7))
local ending, task = arg(8), arg(9)

local done = redis.call('HMGET', K.settled .. job, unpack(SETTLED_FIELDS))
if done[1] then
  return {'duplicate', unpack(done)}
end
local held = get_held(job)
if not held and ending == 'withdraw' then
  -- Nothing held (yet): only the mark, which a reserve arriving later finds.
  local settled = {'', '', outcome, '0', '0', 'ok', 'ok'}
  keep(job, settled, retention)
  return {'settled', unpack(settled)}
end
if not held and (agent_arg == '' or ending ~= 'settle') then
  return {'not found'}
end
local owner, used_model = agent_arg, model_arg
if held then
  owner = held.agent
  -- The reservation's model; when it named none, the one the settle names (_engine._end).
  if held.model ~= '' then
    used_model = held.model
  end
end
local allowance = json_at(K.allowance .. owner)
-- The engine releases the reservation, then charges: here the owner's and the
-- model's rows are read once, released and charged, and written once (a held
-- reservation is the owner's, and used_model's own when it named a model).
local row = get_agent(owner)
local previous = 'ok'
if allowance then
  previous = agent_status(allowance, row)
end
if held then
  unhold_agent(row, held)
  redis.call('DEL', K.held .. job)
  redis.call('ZREM', K.expiry, job)
end
-- No allowance, or one stored before failure_charge existed (the field is nil):
-- go-agentic's half, as the Python model's default.
local failure_charge = 'half'
if allowance and allowance.failure_charge then
  failure_charge = allowance.failure_charge
end
local charged = charged_tokens(outcome, tokens_in, tokens_out, failure_charge)
local quota = nil
if used_model ~= '' then
  quota = json_at(K.limits .. used_model)
end
local cost = share_of_cost(cost_microcents(quota, tokens_in, tokens_out), charged,
  tokens_in + tokens_out)
row.tokens_used = row.tokens_used + charged
if held and (ending == 'unreserve' or ending == 'withdraw') then
  -- Never one of today's jobs, unless its count is gone already: rolled away with
  -- an earlier day's, or cleared by a reset at or after it (_engine._end).
  local reset_at = stored(redis.call('HGET', K.agent .. owner, 'reset_at'), 0)
  if held.created_at >= START and held.created_at > reset_at then
    row.jobs_started = math.max(0, row.jobs_started - 1)
  end
  if held.model ~= '' then
    redis.call('ZREM', K.requests .. held.model, held.request)
  end
end
put_agent(owner, row)
if used_model ~= '' then
  local mrow = get_model(used_model)
  if held and held.model ~= '' then
    unhold_model(mrow, held)
  end
  mrow.tokens_used = mrow.tokens_used + charged
  mrow.cost_used = mrow.cost_used + cost
  put_model(used_model, mrow)
end
local status = 'ok'
if allowance then
  status = agent_status(allowance, row)
end

local settled = {owner, used_model, outcome, num(charged), num(cost), previous, status}
if ending == 'settle' or ending == 'withdraw' then
  keep(job, settled, retention)
end
if ending ~= 'settle' then
  -- Unreserve and expire keep no settlement (_engine._end): a job that runs after
  -- all still gets charged. A withdraw records no event.
  return {'settled', unpack(settled)}
end
if LOG.seq ~= '' then  -- with the settle itself: no crash between the two can lose it
  local entries = {usage_event(job, task, owner, used_model, outcome, tokens_in,
    tokens_out, charged, cost)}
  crossing_entries(entries, 'settle', job, task, owner, used_model, previous, status)
  log_append(LOG.seq, LOG.stream, LOG.ids, entries)
end
return {'settled', unpack(settled)}
