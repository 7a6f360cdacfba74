-- Tasks matching every filter, most urgent, then oldest, then id first (after
-- task_lib.lua). Walks the per-rank index (per status and rank when a status is
-- given; per agent and rank for one agent's tasks in progress; the ready pending
-- tasks of the rank for ready ones), so it stops as soon as ``limit`` tasks matched.
-- ARGV: heads, status, priority, project, claimed_by, labels JSON, ready, limit,
-- after, labels_within JSON. Each filter is '' when not given; project and
-- claimed_by are '=' .. value so that an empty value can be asked for; ready is
-- '1' / '0'; after is a task id (only tasks after it in this order); labels_within
-- lists the only labels a task may have ('[]': none).
-- Reply: the tasks | {'missing'} for an unknown after id
local status, priority = ARGV[BASE + 1], ARGV[BASE + 2]
local project, claimed_by = ARGV[BASE + 3], ARGV[BASE + 4]
local labels = ARGV[BASE + 5] ~= '' and cjson.decode(ARGV[BASE + 5]) or {}
local ready, limit = ARGV[BASE + 6], tonumber(ARGV[BASE + 7])
local after = ARGV[BASE + 8]
local within = nil -- label -> true: the only labels a listed task may have
if ARGV[BASE + 9] ~= '' then
  within = {}
  for _, label in ipairs(cjson.decode(ARGV[BASE + 9])) do
    within[label] = true
  end
end
local out = {}
-- after's place: its rank and its score (created_at) in the rank's index
local after_rank, after_score = -1, nil
if after ~= '' then
  local v = redis.call('HMGET', HEAD.data .. after, 'priority', 'created_at')
  if not v[1] then
    return {'missing'}
  end
  after_rank, after_score = RANK[v[1]], v[2]
end
if limit == 0 then
  return out
end

-- a <= b byte by byte, as a sorted set orders members of equal score and the other
-- stores order ids (Lua's own <= follows the server's locale).
local function bytes_up_to(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then
      return x < y
    end
  end
  return #a <= #b
end

-- Where a walk of key (rank after_rank) starts: past every member ordered before
-- or at after (lower scores, then equal scores with an id up to after's).
local function start_after(key)
  local start = redis.call('ZCOUNT', key, '-inf', '(' .. after_score)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, after_score, after_score)) do
    if bytes_up_to(id, after) then
      start = start + 1
    end
  end
  return start
end

-- The fields the filters read, from a task's HGETALL reply: the reply itself is
-- what is returned, so a listed task is not rebuilt as a table and flattened back.
local WANTED = {project = true, claimed_by = true, labels = true, status = true,
  dependencies = true}
local function filtered_fields(raw)
  local t = {}
  for i = 1, #raw, 2 do
    if WANTED[raw[i]] then
      t[raw[i]] = raw[i + 1]
    end
  end
  return t
end

local function matches(t)
  -- A status index lists only its status; the claims index and the ready half are
  -- checked, as an older writer may have changed a task without them.
  if status ~= '' and t.status ~= status then
    return false
  end
  if project ~= '' and '=' .. t.project ~= project then
    return false
  end
  if claimed_by ~= '' and '=' .. t.claimed_by ~= claimed_by then
    return false
  end
  if #labels > 0 then
    local has = cjson.decode(t.labels)
    for _, label in ipairs(labels) do
      if not contains(has, label) then
        return false
      end
    end
  end
  if within then
    for _, label in ipairs(cjson.decode(t.labels)) do
      if not within[label] then
        return false
      end
    end
  end
  if ready ~= '' then
    local is_ready = t.status == 'pending' and #unfinished(t) == 0
    if is_ready ~= (ready == '1') then
      return false
    end
  end
  return true
end

-- Each listing that reads an index also audits a chunk of it against the tasks, at
-- most once a second (TaskKeys.checked_head): a writer without the indexes (an older
-- version sharing the store) can change tasks in ways the counts below do not show
-- (a dependency completed, two changes that cancel out), and a chunk at a time
-- finds them without a whole check's stall. The due mark is the listing's first
-- write: at maxmemory Redis refuses it (and then every write of this call), so
-- writable turns false and the listing walks the status index as before the
-- indexes (matches() checks every task: the same answer, slower).
local AUDIT = 256  -- ids of each rank a listing's audit reads, at most
local writable = true
local function due(name)
  local set = redis.pcall('SET', HEAD.checked .. name .. ':due', '1', 'NX', 'EX', 1)
  if type(set) == 'table' and set.err then
    writable = false
    return false
  end
  return set ~= false
end

-- The next AUDIT ids of the sorted set key, from where the last audit of name
-- stopped; round and round.
local function audit_chunk(name, key)
  local at = tonumber(redis.call('GET', HEAD.checked .. name)) or 0
  local ids = redis.call('ZRANGE', key, at, at + AUDIT - 1)
  redis.call('SET', HEAD.checked .. name, #ids < AUDIT and 0 or at + #ids)
  return ids
end

-- The tasks in progress claimed for one agent (a runner's poll) are read from that
-- agent's claims index, not by walking every task in progress. The index is
-- trusted while it holds as many ids as there are tasks in progress; a writer that
-- keeps none (an older version sharing the store, or a store from before the
-- index) makes them differ, and the index is rebuilt from the tasks in progress.
local function claims_in_step()
  local count = 0
  for rank = 0, 3 do
    count = count + redis.call('ZCARD', HEAD.status .. 'in_progress:' .. rank)
  end
  return tonumber(redis.call('GET', HEAD.claimed)) == count
end

local function rebuild_claims()
  for _, agent in ipairs(redis.call('SMEMBERS', HEAD.claimers)) do
    for rank = 0, 3 do
      redis.call('DEL', claims_key(rank, agent))
    end
  end
  redis.call('DEL', HEAD.claimers)
  redis.call('SET', HEAD.claimed, 0)
  for rank = 0, 3 do
    for _, id in ipairs(redis.call('ZRANGE', HEAD.status .. 'in_progress:' .. rank, 0, -1)) do
      local v = redis.call('HMGET', HEAD.data .. id, 'claimed_by', 'created_at')
      if v[1] and v[2] then  -- an id whose task is gone is not indexed (the walk skips it)
        index_claim(rank, v[1], {id = id, created_at = v[2]})
      end
    end
  end
end

-- A chunk of the tasks in progress, each looked for in its agent's index: one
-- missing is indexed, and the count then disagrees (a stale entry was its pair), so
-- the index is rebuilt.
local function audit_claims()
  for rank = 0, 3 do
    for _, id in ipairs(audit_chunk('claims:' .. rank, HEAD.status .. 'in_progress:' .. rank)) do
      local v = redis.call('HMGET', HEAD.data .. id, 'claimed_by', 'created_at')
      if v[1] and v[2] and not redis.call('ZSCORE', claims_key(rank, v[1]), id) then
        index_claim(rank, v[1], {id = id, created_at = v[2]})
      end
    end
  end
end

local agent = nil  -- listing one agent's tasks in progress: from its claims index
if status == 'in_progress' and #claimed_by > 1 then
  local audit = due('claims')
  if writable then
    agent = claimed_by:sub(2)
    if audit then
      audit_claims()
    end
    if not claims_in_step() then
      rebuild_claims()
    end
  end
end

-- The ready pending tasks (a dispatcher's listing, and its wait) are read from the
-- ready half of the pending split, not by walking the tasks waiting for a
-- dependency. A rank whose halves do not add up to its pending tasks (a writer that
-- keeps no split: an older version, a store from before it) is split again first.
local only_ready = ready == '1' and (status == '' or status == 'pending') and not agent

-- A chunk of the rank's pending tasks: a waiting one whose dependencies are all
-- completed now is made ready; one in neither half is filed (the halves then add up
-- to more than the pending tasks when a stale entry was its pair: split again).
local function audit_pending(rank)
  for _, id in ipairs(audit_chunk('ready:' .. rank, HEAD.status .. 'pending:' .. rank)) do
    local v = redis.call('HMGET', HEAD.data .. id, 'created_at', 'dependencies')
    local t = {id = id, created_at = v[1], dependencies = v[2]}
    if not (v[1] and v[2]) then
      t = nil  -- its task is gone: left to the walk, which skips it
    elseif redis.call('ZSCORE', HEAD.waiting .. rank, id) then
      if #unfinished(t) == 0 then
        redis.call('ZREM', HEAD.waiting .. rank, id)
        redis.call('ZADD', HEAD.ready .. rank, t.created_at, id)
      end
    elseif not redis.call('ZSCORE', HEAD.ready .. rank, id) then
      file_pending(t, rank)
    end
  end
end

-- Whether the rank's ready half can be read (audited, or split again, first).
local function split_pending(rank)
  local pending = HEAD.status .. 'pending:' .. rank
  local audit = due('ready:' .. rank)
  if not writable then
    return false
  end
  if audit then
    audit_pending(rank)
  end
  if redis.call('ZCARD', pending)
      == redis.call('ZCARD', HEAD.ready .. rank) + redis.call('ZCARD', HEAD.waiting .. rank) then
    return true
  end
  redis.call('DEL', HEAD.ready .. rank, HEAD.waiting .. rank)
  for _, id in ipairs(redis.call('ZRANGE', pending, 0, -1)) do
    local v = redis.call('HMGET', HEAD.data .. id, 'created_at', 'dependencies')
    if v[1] and v[2] then
      file_pending({id = id, created_at = v[1], dependencies = v[2]}, rank)
    end
  end
  return true
end

local ranks = {0, 1, 2, 3}
if priority ~= '' then
  ranks = {RANK[priority]}
end
for _, rank in ipairs(ranks) do
  local key = HEAD.order .. rank
  if agent then
    key = claims_key(rank, agent)
  elseif only_ready and split_pending(rank) then
    key = HEAD.ready .. rank
  elseif status ~= '' then
    key = HEAD.status .. status .. ':' .. rank
  end
  local start = 0
  if rank == after_rank then
    start = start_after(key)
  end
  while rank >= after_rank do
    local ids = redis.call('ZRANGE', key, start, start + 99)
    if #ids == 0 then
      break
    end
    for _, id in ipairs(ids) do
      local raw = redis.call('HGETALL', HEAD.data .. id)
      if matches(filtered_fields(raw)) then
        out[#out + 1] = raw
        if limit and #out >= limit then
          return out
        end
      end
    end
    start = start + 100
  end
end
return out
