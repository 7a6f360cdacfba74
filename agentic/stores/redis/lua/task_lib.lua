-- task_lib.lua: the task rules in Lua, after common.lua. They mirror
-- agentic/stores/_tasks.py; the contract tests run both on the same cases.
--
-- ARGV[1..14] are the key heads of TaskKeys (stores/keys.py), in declaration
-- order, and ARGV[15..17] the event log's seq, stream and ids keys ('' when the
-- store records no events); a script's own arguments start at ARGV[BASE + 1].
-- Keys are built here because the cascade finds the tasks it blocks while it runs.
-- After common.lua and log_lib.lua.
--
-- A task is a table of the hash's fields, all text: times are num() strings or
-- '' for none, lists are JSON. Every script checks everything before its first
-- write, so a refused call changes nothing.

local HEAD, LOG
-- per call {
HEAD = {
  data = ARGV[1], dependents = ARGV[2], logs = ARGV[3], idempotency = ARGV[4],
  leases = ARGV[5], order = ARGV[6], status = ARGV[7], retired = ARGV[8],
  claims = ARGV[9], claimers = ARGV[10], claimed = ARGV[11], ready = ARGV[12],
  waiting = ARGV[13], checked = ARGV[14],
}
LOG = {seq = ARGV[15], stream = ARGV[16], ids = ARGV[17]}
-- } per call
local BASE = 17
local RANK = {critical = 0, high = 1, medium = 2, low = 3}

local function load(id)
  local raw = redis.call('HGETALL', HEAD.data .. id)
  if #raw == 0 then
    return nil
  end
  local t = {}
  for i = 1, #raw, 2 do
    t[raw[i]] = raw[i + 1]
  end
  return t
end

local function flat(t)
  local out = {}
  for k, v in pairs(t) do
    out[#out + 1] = k
    out[#out + 1] = v
  end
  return out
end

-- cjson encodes an empty table as {}, so an empty list is written by hand.
local function encode_list(list)
  if #list == 0 then
    return '[]'
  end
  return cjson.encode(list)
end

local function contains(list, value)
  for _, item in ipairs(list) do
    if item == value then
      return true
    end
  end
  return false
end

-- Whether job may no longer claim t (_tasks.require_fresh_job): its last attempt
-- ran under it, or it is in t's retired hash (replaced, released or withdrawn).
local function spent_job(t, job)
  return job == (t.job_id or '') or redis.call('HEXISTS', HEAD.retired .. t.id, job) == 1
end

-- Remember that job may not claim task id again: made '1' (its claim was made,
-- then replaced or released) or '0' (withdrawn before it was made). A job id is
-- retired once; the first kind stays.
local function retire(id, job, made)
  if job ~= '' then
    redis.call('HSETNX', HEAD.retired .. id, job, made)
  end
end

-- Failed tasks a task depending on dependencies (ids) would wait on forever: failed
-- dependencies, and the blockers of blocked ones (_tasks.creation_blockers). Second
-- result: the first dependency that does not exist (then no blockers).
local function creation_blockers(dependencies)
  local blockers = {}
  for _, dep in ipairs(dependencies) do
    local status, names = unpack(redis.call('HMGET', HEAD.data .. dep, 'status', 'blockers'))
    if not status then
      return nil, dep
    end
    local found = {}
    if status == 'failed' then
      found = {dep}
    elseif status == 'blocked' then
      found = cjson.decode(names)
    end
    for _, id in ipairs(found) do
      if not contains(blockers, id) then
        blockers[#blockers + 1] = id
      end
    end
  end
  return blockers
end

-- Dependencies of t not completed, in t's order.
local function unfinished(t)
  local out = {}
  if t.dependencies == '[]' then
    return out  -- most tasks: no JSON to decode
  end
  for _, dep in ipairs(cjson.decode(t.dependencies)) do
    if redis.call('HGET', HEAD.data .. dep, 'status') ~= 'completed' then
      out[#out + 1] = dep
    end
  end
  return out
end

-- File a pending task of rank rank as ready or waiting (TaskKeys.ready_head).
local function file_pending(t, rank)
  local head = #unfinished(t) == 0 and HEAD.ready or HEAD.waiting
  redis.call('ZADD', head .. rank, t.created_at, t.id)
end

local function unfile_pending(rank, id)
  redis.call('ZREM', HEAD.ready .. rank, id)
  redis.call('ZREM', HEAD.waiting .. rank, id)
end

-- Task id was just completed: its waiting dependents whose dependencies are now
-- all completed become ready.
local function promote_dependents(id)
  for _, dependent in ipairs(redis.call('SMEMBERS', HEAD.dependents .. id)) do
    local v = redis.call('HMGET', HEAD.data .. dependent, 'status', 'priority', 'created_at',
      'dependencies')
    if v[1] == 'pending' then
      local rank = RANK[v[2]]
      if redis.call('ZREM', HEAD.waiting .. rank, dependent) == 1 then
        file_pending({id = dependent, created_at = v[3], dependencies = v[4]}, rank)
      end
    end
  end
end

-- The index of agent's tasks in progress of one rank (see TaskKeys.claims_head).
local function claims_key(rank, agent)
  return HEAD.claims .. rank .. ':' .. agent
end

-- Add or remove one entry of an agent's claims index, counting it in HEAD.claimed.
local function index_claim(rank, agent, t)
  if redis.call('ZADD', claims_key(rank, agent), t.created_at, t.id) == 1 then
    redis.call('INCR', HEAD.claimed)
    redis.call('SADD', HEAD.claimers, agent)
  end
end

local function unindex_claim(rank, agent, id)
  if agent and redis.call('ZREM', claims_key(rank, agent), id) == 1 then
    redis.call('DECR', HEAD.claimed)
  end
end

-- Store t and keep the status index, the claims index, the ready / waiting split
-- and the lease set in step with it. A task enters and leaves in_progress only here; while in progress its
-- claimed_by does not change (a claim needs a pending task), nor does a priority.
local function save(t, old_status)
  local rank = RANK[t.priority]
  if old_status == 'in_progress' and t.status ~= 'in_progress' then
    -- the claim's agent as stored: t's own may be cleared already (unclaim)
    unindex_claim(rank, redis.call('HGET', HEAD.data .. t.id, 'claimed_by'), t.id)
  elseif t.status == 'in_progress' and old_status ~= 'in_progress' then
    index_claim(rank, t.claimed_by, t)
  end
  if old_status == 'pending' and t.status ~= 'pending' then
    unfile_pending(rank, t.id)
  elseif t.status == 'pending' and old_status ~= 'pending' then
    file_pending(t, rank)
  end
  redis.call('HSET', HEAD.data .. t.id, unpack(flat(t)))
  if t.status == 'completed' and old_status ~= 'completed' then
    promote_dependents(t.id)  -- after the HSET: they read t's status as stored
  end
  if t.status == 'completed' and old_status ~= 'completed' then
    -- no claim of it can be made any more (a failed task can be retried: kept)
    redis.call('DEL', HEAD.retired .. t.id)
  end
  if old_status ~= t.status then
    if old_status then
      redis.call('ZREM', HEAD.status .. old_status .. ':' .. rank, t.id)
    end
    redis.call('ZADD', HEAD.status .. t.status .. ':' .. rank, t.created_at, t.id)
  end
  if t.status == 'in_progress' and t.lease_expires_at ~= '' then
    redis.call('ZADD', HEAD.leases, t.lease_expires_at, t.id)
  else
    redis.call('ZREM', HEAD.leases, t.id)
  end
end

local function unclaim(t)
  t.claimed_by, t.claimed_at, t.lease_expires_at, t.lease_seconds = '', '', '', ''
end

local function dead_letter(t, now, reason)
  unclaim(t)
  t.status, t.fail_reason, t.updated_at = 'failed', reason, num(now)
  t.next_attempt_at = ''  -- no next attempt
end

-- A real failure: one more retry counted; past max_retries the dead letter.
-- retry_at is a num() string or ''; result is TaskResult JSON or nil (keep).
local function failed_attempt(t, now, reason, retry_at, result)
  t.retry_count = num(tonumber(t.retry_count) + 1)
  t.last_attempt = num(now)
  if result then
    t.result = result
  end
  if tonumber(t.retry_count) > tonumber(t.max_retries) then
    dead_letter(t, now, 'max retries exceeded (' .. t.max_retries .. '): ' .. reason)
  else
    unclaim(t)
    t.status, t.updated_at, t.next_attempt_at = 'pending', num(now), retry_at
  end
end

-- Every pending/blocked task downstream of failed_id (through pending/blocked
-- tasks only) becomes blocked, naming it. Breadth first, as the Python stores.
-- Returns those that were pending (record() records a task_blocked for each).
local function block_dependents(failed_id, now)
  local newly = {}
  local queue, seen, head = {failed_id}, {}, 1
  while head <= #queue do
    local members = redis.call('SMEMBERS', HEAD.dependents .. queue[head])
    head = head + 1
    for _, id in ipairs(members) do
      if not seen[id] then
        seen[id] = true
        local d = load(id)
        if d.status == 'pending' or d.status == 'blocked' then
          local blockers = cjson.decode(d.blockers)
          if not contains(blockers, failed_id) then
            blockers[#blockers + 1] = failed_id
          end
          local old = d.status
          d.status, d.blockers, d.updated_at = 'blocked', encode_list(blockers), num(now)
          save(d, old)
          if old == 'pending' then
            newly[#newly + 1] = d
          end
          queue[#queue + 1] = id
        end
      end
    end
  end
  return newly
end

-- Save t; a task that just became failed blocks its dependents. Returns the tasks
-- it blocked that were pending (for record()).
local function finish(t, old_status, now)
  save(t, old_status)
  if t.status == 'failed' and old_status ~= 'failed' then
    return block_dependents(t.id, now)
  end
  return {}
end


-- --- the events a transition records (_tasks.lifecycle_events) ---------------------

-- once per run of a task (Task.reruns counts the runs after the first)
local ONCE_PER_TASK = {task_completed = true, task_dead_lettered = true}

-- events.transition_id, '' for an attempt without a job id: log_append names such
-- an event by its offset, unique in the log (Lua has no usable randomness in a
-- script: the generator is reseeded on every call).
local function transition_id(task_id, kind, job, rerun)
  if ONCE_PER_TASK[kind] then
    if rerun ~= '0' then
      return task_id .. ':' .. kind .. ':' .. rerun
    end
    return task_id .. ':' .. kind
  end
  if job ~= '' then
    return task_id .. ':' .. job .. ':' .. kind
  end
  return ''
end

local function event(kind, t, agent, job, now, payload)
  payload.job_id = job
  local function body(id)
    return cjson.encode({
      id = id, type = kind, time = iso_time(now), source = 'agentic.tasks', task_id = t.id,
      agent_id = agent, payload = payload, correlation_id = '', causation_id = '',
    })
  end
  local id = transition_id(t.id, kind, job, t.reruns or '0')
  if id ~= '' then
    return {id, body(id)}
  end
  return {'', function(offset)
    local named = t.id .. ':' .. kind .. '#' .. string.format('%d', offset)
    return named, body(named)
  end}
end

-- before: {status, retry_count, claimed_by, job_id} of t before the change; reason:
-- why an attempt failed or the task was given back ('' for a release: 'released');
-- blocked: the pending tasks its failure blocked (finish()'s answer; nil for none).
local function record(before, t, now, reason, blocked)
  if LOG.seq == '' then
    return
  end
  local events = {}
  local agent, job = before.claimed_by or '', before.job_id or ''
  if before.status == 'pending' and t.status == 'in_progress' then
    events[1] = event('task_claimed', t, t.claimed_by, t.job_id or '', now, {})
  elseif before.status == 'in_progress' and t.status ~= 'in_progress' then
    if t.status == 'completed' then
      events[1] = event('task_completed', t, agent, job, now, {})
    elseif tonumber(t.retry_count) > tonumber(before.retry_count) then
      local count = tonumber(t.retry_count)
      events[1] = event('task_failed', t, agent, job, now,
        {retry_count = count, reason = reason ~= '' and reason or (t.fail_reason or '')})
    elseif t.status == 'pending' then
      if reason == '' then
        reason = 'released'
      end
      events[1] = event('task_requeued', t, agent, job, now, {reason = reason})
    end
  end
  if t.status == 'failed' and before.status ~= 'failed' then
    events[#events + 1] = event('task_dead_lettered', t, agent, job, now,
      {reason = t.fail_reason})
  end
  blocked = blocked or {}
  table.sort(blocked, function(a, b) return a.id < b.id end)
  for _, d in ipairs(blocked) do
    events[#events + 1] = event('task_blocked', d, '', '', now,
      {reason = 'blocked: task ' .. t.id .. ' failed', blockers = cjson.decode(d.blockers)})
  end
  if #events > 0 then
    log_append(LOG.seq, LOG.stream, LOG.ids, events)
  end
end

-- What record() needs of t before a change.
local function before_change(t)
  return {status = t.status, retry_count = t.retry_count, claimed_by = t.claimed_by,
    job_id = t.job_id}
end
