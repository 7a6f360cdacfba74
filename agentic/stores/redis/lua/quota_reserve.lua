-- quota_reserve.lua (after common.lua, quota_lib.lua, log_lib.lua, quota_log.lua):
-- _engine.reserve, or with
-- dry = '1' _engine.check (only the sweep and the rolling-hour trim write then).
-- arg: job id, agent id, model, tokens, dry, default reservation ttl, task id ('' =
-- none: the threshold events a recording store records name it)
-- Replies: {'reserved', agent, model, tokens, cost, created_at, expires_at,
-- previous status, status} | {'check' or 'denied', rule, allowance JSON, quota
-- JSON, 4 agent counters, 4 model counters, requests, oldest, now, period end}
-- | {'conflict'} | {'no allowance'}
sweep()
local job, agent_id, model = arg(1), arg(2), arg(3)
local tokens, dry, default_ttl = tonumber(arg(4)), arg(5) == '1', tonumber(arg(6))
local task = arg(7)

-- A new job id (the usual case) has neither a reservation nor a settlement: one
-- EXISTS of both keys says so, instead of reading each.
if not dry and redis.call('EXISTS', K.held .. job, K.settled .. job) > 0 then
  local held = get_held(job)
  if held then
    -- A repeat changes nothing, so it crosses no threshold: ok -> ok (as the engine).
    return {'reserved', held.agent, held.model, num(held.tokens), num(held.cost),
      num(held.created_at), num(held.expires_at), 'ok', 'ok'}
  end
  if redis.call('EXISTS', K.settled .. job) == 1 then
    return {'conflict'}
  end
end

local allowance, allowance_json = json_at(K.allowance .. agent_id)
if not allowance then
  return {'no allowance'}
end
local row = get_agent(agent_id)
local quota, quota_json = nil, ''
local mrow = {tokens_used = 0, tokens_reserved = 0, cost_used = 0, cost_reserved = 0}
local count = 0
if model ~= '' then
  quota, quota_json = json_at(K.limits .. model)
  mrow = get_model(model)
  count = requests(model)
end
local counters = {
  tokens_used = mrow.tokens_used, tokens_reserved = mrow.tokens_reserved,
  cost_used = mrow.cost_used, cost_reserved = mrow.cost_reserved, requests = count,
}
local allowed, detail = decide(allowance, row, quota, counters, model, tokens)
if dry or not allowed then
  local oldest = count > 0 and oldest_request(model)
  return {dry and 'check' or 'denied', allowed and '' or detail, allowance_json, quota_json,
    num(row.tokens_used), num(row.jobs_started), num(row.tokens_reserved),
    num(row.active_jobs), num(mrow.tokens_used), num(mrow.tokens_reserved),
    num(mrow.cost_used), num(mrow.cost_reserved), num(count), oldest and num(oldest) or '',
    NOW_TEXT, num(END)}
end

local cost = detail
local previous = agent_status(allowance, row)
local request = ''  -- the member of the model's request log this admission added
row.jobs_started = row.jobs_started + 1
row.active_jobs = row.active_jobs + 1
row.tokens_reserved = row.tokens_reserved + tokens
-- A stored row of this period gets only the fields a reservation changes (get_agent).
if row.whole then
  put_agent(agent_id, row)
else
  redis.call('HSET', K.agent .. agent_id, 'jobs_started', num(row.jobs_started),
    'tokens_reserved', num(row.tokens_reserved), 'active_jobs', num(row.active_jobs))
end
if model ~= '' then
  mrow.tokens_reserved = mrow.tokens_reserved + tokens
  mrow.cost_reserved = mrow.cost_reserved + cost
  if mrow.whole then
    put_model(model, mrow)
  else
    redis.call('HSET', K.model .. model, 'tokens_reserved', num(mrow.tokens_reserved),
      'cost_reserved', num(mrow.cost_reserved))
  end
  -- One member per admitted request: a job id admitted again after its
  -- reservation expired is a second request, even at the same instant (an
  -- injected clock, or expire then reserve): then a suffix keeps it apart.
  request = job .. '@' .. NOW_TEXT
  local n = 1
  while redis.call('ZADD', K.requests .. model, 'NX', NOW_TEXT, request) == 0 do
    n = n + 1
    request = job .. '@' .. NOW_TEXT .. '#' .. n
  end
end
local ttl = default_ttl
if allowance.max_job_duration > 0 then
  -- At most MAX_TTL, as models.AgentAllowance reads one stored before that bound.
  ttl = math.min(allowance.max_job_duration, MAX_TTL)
end
-- Formatted once each, for the stored reservation and the reply alike.
local tokens_text, cost_text, expires_text = num(tokens), num(cost), num(NOW + ttl)
-- 'ttl': the lifetime quota_extend.lua renews (Held.ttl).
redis.call('HSET', K.held .. job, 'agent', agent_id, 'model', model, 'tokens', tokens_text,
  'cost', cost_text, 'created_at', NOW_TEXT, 'expires_at', expires_text, 'request', request,
  'ttl', num(ttl))
redis.call('ZADD', K.expiry, expires_text, job)
local status = agent_status(allowance, row)
if LOG.seq ~= '' and status ~= previous then  -- recorded with the reserve itself
  local entries = {}
  crossing_entries(entries, 'reserve', job, task, agent_id, model, previous, status)
  if #entries > 0 then
    log_append(LOG.seq, LOG.stream, LOG.ids, entries)
  end
end
return {'reserved', agent_id, model, tokens_text, cost_text, NOW_TEXT, expires_text,
  previous, status}
