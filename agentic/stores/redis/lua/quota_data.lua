-- quota_data.lua (after common.lua, quota_lib.lua): the go-agentic data
-- operations, after the same sweep and rollover as reserve and settle.
-- arg(1) names the operation; its arguments follow.
--   usage id               -> {period_start, tokens_used, jobs_started, active_jobs,
--                              tokens_reserved}
--   usages                 -> {id, <the 5 usage fields>, id, ...} (unsorted)
--   model_usage model      -> {period_start, tokens_used, tokens_reserved, cost_used,
--                              cost_reserved, requests in the last hour}
--   add_model_tokens model tokens
--   add_usage id tokens jobs | decrement_active id | return_tokens id tokens | reset id
--   (reset also stamps the row's reset_at)
sweep()
local op = arg(1)

local function usage(id)
  local row = get_agent(id)
  return {num(row.period_start), num(row.tokens_used), num(row.jobs_started),
    num(row.active_jobs), num(row.tokens_reserved)}
end

if op == 'usage' then
  return usage(arg(2))
end
if op == 'usages' then
  local out = {}
  for _, id in ipairs(redis.call('SUNION', K.agents, K.allowances)) do
    out[#out + 1] = id
    for _, value in ipairs(usage(id)) do
      out[#out + 1] = value
    end
  end
  return out
end
if op == 'model_usage' then
  local row = get_model(arg(2))
  local count = requests(arg(2))
  return {num(row.period_start), num(row.tokens_used), num(row.tokens_reserved),
    num(row.cost_used), num(row.cost_reserved), num(count)}
end
if op == 'add_model_tokens' then
  local row = get_model(arg(2))
  row.tokens_used = row.tokens_used + tonumber(arg(3))
  put_model(arg(2), row)
  return {}
end

-- The rest change one agent's counters; like _engine._update_agent they store the
-- row even when nothing changed (the agent then appears in usages).
local id = arg(2)
local row = get_agent(id)
if op == 'add_usage' then
  local jobs = tonumber(arg(4))
  row.tokens_used = row.tokens_used + tonumber(arg(3))
  row.jobs_started = row.jobs_started + jobs
  row.active_jobs = row.active_jobs + jobs
elseif op == 'decrement_active' then
  row.active_jobs = math.max(0, row.active_jobs - 1)
elseif op == 'return_tokens' then
  row.tokens_used = math.max(0, row.tokens_used - tonumber(arg(3)))
elseif op == 'reset' then
  row.tokens_used, row.jobs_started = 0, 0
  -- AgentRow.reset_at: only the reset writes it and only an unreserve reads it,
  -- so the hot paths' get_agent / put_agent leave the field alone.
  redis.call('HSET', K.agent .. id, 'reset_at', NOW_TEXT)
else
  return redis.error_reply('quota_data.lua: unknown operation ' .. tostring(op))
end
put_agent(id, row)
return {}
