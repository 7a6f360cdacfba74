-- quota_log.lua (after common.lua, quota_lib.lua, log_lib.lua): the events a quota
-- store records with the step that caused them (agentic/quota.py usage_recorded and
-- crossing_events), as the Event JSON the Python stores write. Numbers with %.0f:
-- cjson prints 14 significant digits, exponent notation past them, and %d wraps
-- past 2^63 (a cost can get there).
local SOURCE = '"source":"agentic.quota"'

local function event_json(id, kind, task, agent, payload)
  return format('{"id":%s,"type":"%s","time":%s,' .. SOURCE .. ',"task_id":%s,'
    .. '"agent_id":%s,"payload":%s,"correlation_id":"","causation_id":""}',
    cjson.encode(id), kind, cjson.encode(iso_time(NOW)), cjson.encode(task),
    cjson.encode(agent), payload)
end

-- quota.usage_recorded: {event id, body}
local function usage_event(job, task, owner, used_model, outcome, tokens_in, tokens_out,
    charged, cost)
  local id = job .. ':usage_recorded'
  local payload = format('{"job_id":%s,"model":%s,"outcome":%s,"tokens_in":%.0f,'
    .. '"tokens_out":%.0f,"tokens_charged":%.0f,"cost_charged":%.0f}', cjson.encode(job),
    cjson.encode(used_model), cjson.encode(outcome), tokens_in, tokens_out, charged, cost)
  return {id, event_json(id, 'usage_recorded', task, owner, payload)}
end

-- quota.crossing_events: adds to entries the {event id, body} of each threshold the
-- agent's status crossed going from previous to status in step ('reserve', 'settle').
local SEVERITY = {ok = 0, warning = 1, exceeded = 2}
local function crossing_entries(entries, step, job, task, agent, model, previous, status)
  if SEVERITY[status] <= SEVERITY[previous] then
    return
  end
  local payload = format('{"job_id":%s,"model":%s}', cjson.encode(job), cjson.encode(model))
  local kinds = {}
  if SEVERITY[previous] < 1 then
    kinds[#kinds + 1] = 'quota_warning'
  end
  if status == 'exceeded' then
    kinds[#kinds + 1] = 'quota_exceeded'
  end
  for _, kind in ipairs(kinds) do
    local id = job .. ':' .. step .. ':' .. kind
    entries[#entries + 1] = {id, event_json(id, kind, task, agent, payload)}
  end
end
