-- quota_lib.lua: shared by the quota scripts (after common.lua). It mirrors
-- agentic/quota.py (the rules) and agentic/stores/_engine.py (sweep, rollover,
-- release) line for line; keep them in step. Integer arithmetic in doubles is
-- exact below 2^53, which the Python store enforces on its inputs.
--
-- ARGV layout (RedisAllowanceStore builds it):
--   [1]      now, or '' for the server's TIME
--   [2]      the starts of the quota timezone's days around now, comma separated
--            (quota.day_starts: epoch seconds, ascending)
--   [3..13]  key heads and keys of agentic.stores.keys.QuotaKeys, in field order
--   [14..16] the event log's seq, stream and ids keys ('' when the store records
--            no events: a settle records usage_recorded in the log with itself)
--   [17..]   the script's own arguments: arg(1), arg(2), ...

local DAY, HOUR = 86400, 3600
-- models.MAX_RESERVATION_TTL: the longest a reservation lives, in seconds
local MAX_TTL = 1e9

-- quota.period_bounds: the quota day containing now, between two of the day starts
-- in text, else whole days from the first or the last of them.
local function period_bounds(now, text)
  local starts = {}
  for start in string.gmatch(text, '[^,]+') do
    starts[#starts + 1] = tonumber(start)
  end
  for i = 1, #starts - 1 do
    if starts[i] <= now and now < starts[i + 1] then
      return starts[i], starts[i + 1]
    end
  end
  local edge = starts[#starts]
  if now < starts[1] then
    edge = starts[1]
  end
  local start = edge + math.floor((now - edge) / DAY) * DAY
  return start, start + DAY
end

local K, LOG, NOW, START, END, NOW_TEXT
-- per call {
K = {
  allowance = ARGV[3], allowances = ARGV[4], limits = ARGV[5], agent = ARGV[6],
  agents = ARGV[7], model = ARGV[8], requests = ARGV[9], held = ARGV[10],
  expiry = ARGV[11], settled = ARGV[12], settled_at = ARGV[13],
}
LOG = {seq = ARGV[14], stream = ARGV[15], ids = ARGV[16]}
NOW = clock(ARGV[1])
START, END = period_bounds(NOW, ARGV[2])
-- NOW as stored and replied: formatted once for the sweep, the writes and the reply.
NOW_TEXT = num(NOW)
-- } per call

local function arg(i)
  return ARGV[16 + i]
end

-- A stored number, or the default when the field is missing (false).
local function stored(value, default)
  if value then
    return tonumber(value)
  end
  return default
end

local function json_at(key)
  local raw = redis.call('GET', key)
  if not raw then
    return nil, ''
  end
  return cjson.decode(raw), raw
end

-- --- rows, rolled into the current period (_engine._agent / _engine._model) -------
-- A row read here knows whether it was stored (new: not yet) and whether it must be
-- written whole (whole: new, or rolled into this period). Otherwise a writer may
-- store only the fields it changed: formatting and writing the others again costs
-- server time for nothing (a reserve changes three of an agent's five fields, and
-- writes them with its own HSET: a generic writer's tables cost what it saved).

local function get_agent(id)
  local v = redis.call('HMGET', K.agent .. id,
    'period_start', 'tokens_used', 'jobs_started', 'tokens_reserved', 'active_jobs')
  local row = {
    period_start = stored(v[1], START), tokens_used = stored(v[2], 0),
    jobs_started = stored(v[3], 0), tokens_reserved = stored(v[4], 0),
    active_jobs = stored(v[5], 0), new = not v[1],
  }
  row.whole = row.new
  if row.period_start < START then
    row.period_start, row.tokens_used, row.jobs_started = START, 0, 0
    row.whole = true
  end
  return row
end

local function put_agent(id, row)
  redis.call('HSET', K.agent .. id, 'period_start', num(row.period_start),
    'tokens_used', num(row.tokens_used), 'jobs_started', num(row.jobs_started),
    'tokens_reserved', num(row.tokens_reserved), 'active_jobs', num(row.active_jobs))
  -- A stored row's agent is listed already: the two are only ever written together.
  if row.new then
    redis.call('SADD', K.agents, id)
  end
end

local function get_model(model)
  local v = redis.call('HMGET', K.model .. model,
    'period_start', 'tokens_used', 'cost_used', 'tokens_reserved', 'cost_reserved')
  local row = {
    period_start = stored(v[1], START), tokens_used = stored(v[2], 0),
    cost_used = stored(v[3], 0), tokens_reserved = stored(v[4], 0),
    cost_reserved = stored(v[5], 0),
  }
  row.whole = not v[1]
  if row.period_start < START then
    row.period_start, row.tokens_used, row.cost_used = START, 0, 0
    row.whole = true
  end
  return row
end

local function put_model(model, row)
  redis.call('HSET', K.model .. model, 'period_start', num(row.period_start),
    'tokens_used', num(row.tokens_used), 'cost_used', num(row.cost_used),
    'tokens_reserved', num(row.tokens_reserved), 'cost_reserved', num(row.cost_reserved))
end

-- Count of the model's requests in the rolling hour; older ones are dropped on
-- the way (they can never count again).
local function requests(model)
  local key = K.requests .. model
  redis.call('ZREMRANGEBYSCORE', key, '-inf', num(NOW - HOUR))
  return redis.call('ZCARD', key)
end

-- Time of the oldest request left by requests(), or nil: only a refusal or a
-- check reports it, so an admitted reserve never reads it.
local function oldest_request(model)
  return tonumber(redis.call('ZRANGE', K.requests .. model, 0, 0, 'WITHSCORES')[2])
end

-- --- reservations (_engine._release / _engine._sweep) ----------------------------

local function get_held(job)
  local v = redis.call('HMGET', K.held .. job,
    'agent', 'model', 'tokens', 'cost', 'created_at', 'expires_at', 'request')
  if not v[1] then
    return nil
  end
  return {
    job = job, agent = v[1], model = v[2], tokens = tonumber(v[3]), cost = tonumber(v[4]),
    created_at = tonumber(v[5]), expires_at = tonumber(v[6]),
    -- a reservation stored before 'request' existed: its member had no suffix
    request = v[7] or (job .. '@' .. v[5]),
  }
end

-- What a reservation gives back to its agent's and its model's rows; settle
-- applies them to rows it then charges, so that each row is written once.
local function unhold_agent(row, held)
  row.tokens_reserved = math.max(0, row.tokens_reserved - held.tokens)
  row.active_jobs = math.max(0, row.active_jobs - 1)
end

local function unhold_model(mrow, held)
  mrow.tokens_reserved = math.max(0, mrow.tokens_reserved - held.tokens)
  mrow.cost_reserved = math.max(0, mrow.cost_reserved - held.cost)
end

local function release(held)
  local row = get_agent(held.agent)
  unhold_agent(row, held)
  put_agent(held.agent, row)
  if held.model ~= '' then
    local mrow = get_model(held.model)
    unhold_model(mrow, held)
    put_model(held.model, mrow)
  end
end

-- Release every reservation expired by NOW; the expiry zset makes it O(expired).
local function sweep()
  local jobs = redis.call('ZRANGEBYSCORE', K.expiry, '-inf', NOW_TEXT)
  for _, job in ipairs(jobs) do
    local held = get_held(job)
    if held then
      release(held)
    end
    redis.call('DEL', K.held .. job)
  end
  if #jobs > 0 then
    redis.call('ZREMRANGEBYSCORE', K.expiry, '-inf', NOW_TEXT)
  end
end

-- --- the rules (agentic/quota.py) --------------------------------------------------

-- quota.agent_status: of the tokens used and jobs started, not of those reserved
local function agent_status(allowance, row)
  local used = row.tokens_used
  local tokens_limit = allowance.daily_token_limit
  local jobs_limit = allowance.daily_job_limit
  if (tokens_limit > 0 and used >= tokens_limit)
      or (jobs_limit > 0 and row.jobs_started >= jobs_limit) then
    return 'exceeded'
  end
  if tokens_limit > 0 and 5 * used >= 4 * tokens_limit then
    return 'warning'
  end
  return 'ok'
end

local function estimated_cost(quota, tokens)
  if not quota then
    return 0
  end
  return math.floor(tokens * math.max(quota.input_price, quota.output_price) + 0.5)
end

local function remaining(limit, spent)
  if limit <= 0 then
    return -1
  end
  return math.max(0, limit - spent)
end

local function listed(list, value)
  for _, item in ipairs(list) do
    if item == value then
      return true
    end
  end
  return false
end

-- quota.decide, as a gate: true and the estimated cost, or false and the rule
-- that refused. The caller describes a refusal with quota.decide itself (same
-- inputs, returned by the script), so reasons and retry times are Python's own.
local function decide(allowance, agent, quota, counters, model, tokens)
  local remaining_tokens = remaining(allowance.daily_token_limit,
    agent.tokens_used + agent.tokens_reserved)
  local remaining_jobs = remaining(allowance.daily_job_limit, agent.jobs_started)
  if model ~= '' and #allowance.model_allowlist > 0
      and not listed(allowance.model_allowlist, model) then
    return false, 'allowlist'
  end
  if allowance.daily_token_limit > 0
      and (remaining_tokens <= 0 or tokens > remaining_tokens) then
    return false, 'daily token limit'
  end
  if allowance.daily_job_limit > 0 and remaining_jobs <= 0 then
    return false, 'daily job limit'
  end
  if allowance.concurrent_jobs > 0 and agent.active_jobs >= allowance.concurrent_jobs then
    return false, 'concurrent job limit'
  end
  local cost = 0
  if model ~= '' and quota then
    local budget = quota.daily_token_budget
    if budget > 0 then
      local left = budget - counters.tokens_used - counters.tokens_reserved
      if left <= 0 or tokens > left then
        return false, 'daily token budget of model'
      end
    end
    if quota.hourly_rate_limit > 0 and counters.requests >= quota.hourly_rate_limit then
      return false, 'hourly rate limit of model'
    end
    cost = estimated_cost(quota, tokens)
    if quota.cost_ceiling > 0 then
      local left = quota.cost_ceiling * 1000000 - counters.cost_used - counters.cost_reserved
      if left <= 0 or cost > left then
        return false, 'cost ceiling of model'
      end
    end
  end
  return true, cost
end
