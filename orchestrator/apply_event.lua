-- Apply one gateway event to the job it belongs to, atomically.
--
-- ARGV: 1 key prefix, 2 event id, 3 now (Unix ms), 4 id for a new job, 5 effect (JSON),
--       6 event id TTL (s), 7 orphan TTL (s), 8 max attempts for a new job
-- Returns: {ack JSON, transitions JSON, 'new' or 'duplicate'}. The ack is {"job_id": id or null, "outcome": word}
-- where outcome is created, applied, stale, parked, recorded, ignored or duplicate.
--
-- Key builders (k_*) and the ALLOWED transition table are rendered from orchestrator/keys.py and
-- orchestrator/jobs.py when the script is loaded.

local p = ARGV[1]
local event_id = ARGV[2]
local now = tonumber(ARGV[3])
local new_job_id = ARGV[4]
local effect = cjson.decode(ARGV[5])
local event_ttl_s = tonumber(ARGV[6])
local orphan_ttl_s = tonumber(ARGV[7])
local max_attempts = tonumber(ARGV[8])

--@KEY_FUNCTIONS@
--@ALLOWED@

local counters = k_counters(p)
local transitions = {}

local function field(job_key, name)
  local value = redis.call('HGET', job_key, name)
  if value == false then return '' end
  return value
end

local function set_status(job_id, job_key, old, new, reason, from_event)
  local agent = field(job_key, 'agent_id')
  local attempt = tonumber(field(job_key, 'attempts')) or 1
  redis.call('HSET', job_key, 'status', new, 'updated_at', now)
  if old ~= '' then
    redis.call('ZREM', k_status_index(p, old), job_id)
    redis.call('HINCRBY', k_agent_stats(p, agent), old, -1)
  end
  redis.call('ZADD', k_status_index(p, new), now, job_id)
  redis.call('HINCRBY', k_agent_stats(p, agent), new, 1)
  local entry = {at = now, from = old, to = new, reason = reason, attempt = attempt, event_id = from_event}
  redis.call('RPUSH', k_history(p, job_id), cjson.encode(entry))
  redis.call('HINCRBY', counters, 'transitions', 1)
  table.insert(transitions, {job_id = job_id, agent_id = agent, from = old, to = new,
                             attempt = attempt, reason = reason})
end

local function create_job(job_id, kind, fx, from_event)
  local job_key = k_job(p, job_id)
  local agent = fx.fields.agent_id or 'unknown'
  redis.call('HSET', job_key, 'id', job_id, 'kind', kind, 'status', '', 'agent_id', agent,
             'attempts', 1, 'max_attempts', max_attempts, 'created_at', now, 'updated_at', now,
             'events', 0)
  redis.call('ZADD', k_all_jobs(p), now, job_id)
  redis.call('ZADD', k_agent_index(p, agent), now, job_id)
  redis.call('SADD', k_agents(p), agent)
  redis.call('HINCRBY', counters, 'jobs_created', 1)
  set_status(job_id, job_key, '', 'queued', 'created from ' .. fx.hook, from_event)
end

local function park(fx, from_event)
  local pair = fx.lookup[1]
  local key = k_orphan(p, pair[1], pair[2])
  redis.call('RPUSH', key, cjson.encode({event_id = from_event, effect = fx}))
  redis.call('EXPIRE', key, orphan_ttl_s)
  redis.call('HINCRBY', counters, 'events_parked', 1)
end

-- The job keeps the list of identifiers indexed to it, so that purging it can unindex them.
local function remember_ref(job_key, kind, ref)
  local raw = field(job_key, 'refs')
  local refs = {}
  if raw ~= '' then refs = cjson.decode(raw) end
  table.insert(refs, {kind, ref})
  redis.call('HSET', job_key, 'refs', cjson.encode(refs))
end

local apply_to_job

local function drain_orphans(job_id, kind, ref)
  local key = k_orphan(p, kind, ref)
  local items = redis.call('LRANGE', key, 0, -1)
  if #items == 0 then return end
  redis.call('DEL', key)
  for _, item in ipairs(items) do
    local parked = cjson.decode(item)
    apply_to_job(job_id, parked.effect, parked.event_id)
    redis.call('HINCRBY', counters, 'events_unparked', 1)
  end
end

local function target_status(job_key, fx)
  local target = fx.status[field(job_key, 'kind')]
  if target == 'retrying' then
    local attempts = tonumber(field(job_key, 'attempts')) or 1
    local limit = tonumber(field(job_key, 'max_attempts')) or 1
    if attempts >= limit then return 'failed', ' (attempt ' .. attempts .. ' of ' .. limit .. ': dead-lettered)' end
  end
  return target, ''
end

-- Returns 'applied', or 'stale' when the event reports on another run of the job.
apply_to_job = function(job_id, fx, from_event)
  local job_key = k_job(p, job_id)
  local job_run = field(job_key, 'run_id')
  if fx.run_id and job_run ~= '' and job_run ~= fx.run_id then
    redis.call('HINCRBY', counters, 'events_stale', 1)
    return 'stale'
  end

  local old = field(job_key, 'status')
  local target, note = target_status(job_key, fx)
  local moves = target ~= nil and target ~= old and ALLOWED[old][target] == true

  local succeeded = old == 'completed' or old == 'cancelled'
  for name, value in pairs(fx.fields) do
    -- First writer wins, so the record does not depend on event order. The error of the event
    -- that fails the attempt outranks errors seen before it, and a job that ended well keeps no
    -- error from a contradicting late event.
    if name == 'last_error' then
      local failing = moves and (target == 'retrying' or target == 'failed')
      if failing or (not succeeded and field(job_key, name) == '') then
        redis.call('HSET', job_key, name, value)
      end
    elseif field(job_key, name) == '' then
      redis.call('HSET', job_key, name, value)
    end
  end
  redis.call('HINCRBY', job_key, 'events', 1)
  redis.call('HSET', job_key, 'updated_at', now)

  for _, pair in ipairs(fx.link) do
    if redis.call('HSETNX', k_ref(p, pair[1]), pair[2], job_id) == 1 then
      remember_ref(job_key, pair[1], pair[2])
      drain_orphans(job_id, pair[1], pair[2])
    end
  end

  if moves then
    -- Linking may have drained parked events that already moved the job on; check again.
    local current = field(job_key, 'status')
    if current ~= target and ALLOWED[current][target] == true then
      set_status(job_id, job_key, current, target, fx.reason .. note, from_event)
    end
  elseif target ~= nil and target ~= old then
    redis.call('HINCRBY', counters, 'transitions_refused', 1)
  end
  return 'applied'
end

local function finish(job_id, outcome)
  local ack = cjson.encode({job_id = job_id or cjson.null, outcome = outcome})
  redis.call('SET', k_event(p, event_id), ack, 'EX', event_ttl_s)
  return {ack, cjson.encode(transitions), 'new'}
end

-- 1. A replayed event id returns the stored ack and changes nothing.
local stored = redis.call('GET', k_event(p, event_id))
if stored then
  redis.call('HINCRBY', counters, 'events_duplicate', 1)
  return {stored, '[]', 'duplicate'}
end
redis.call('HINCRBY', counters, 'events', 1)

-- 2. Gateway lifecycle events update the gateway record and belong to no job.
if effect.gateway then
  local key = k_gateway(p, effect.fields.source or 'default')
  for name, value in pairs(effect.gateway) do
    redis.call('HSET', key, name, value)
  end
  return finish(nil, 'recorded')
end

-- 3. Find the job through the first identifier that is indexed.
local job_id = nil
local found_first = false
for i, pair in ipairs(effect.lookup) do
  local hit = redis.call('HGET', k_ref(p, pair[1]), pair[2])
  if hit then
    job_id = hit
    found_first = (i == 1)
    break
  end
end

if job_id then
  if apply_to_job(job_id, effect, event_id) == 'applied' then
    return finish(job_id, 'applied')
  end
  if not found_first then
    -- Found through a weaker identifier but about another run: it may belong to a job that is
    -- not recorded yet (a sessions_send into this child), so wait for that job.
    park(effect, event_id)
    return finish(nil, 'parked')
  end
  return finish(job_id, 'stale')
end

-- 4. No job yet: create one, or wait for the event that creates it.
if effect.create_kind then
  create_job(new_job_id, effect.create_kind, effect, event_id)
  apply_to_job(new_job_id, effect, event_id)
  return finish(new_job_id, 'created')
end
if #effect.lookup > 0 then
  park(effect, event_id)
  return finish(nil, 'parked')
end
return finish(nil, 'ignored')
