-- Apply one gateway event to the job it belongs to, atomically.
--
-- ARGV: 1 key prefix, 2 event id, 3 now (Unix ms), 4 id for a new job, 5 effect (JSON),
--       6 event id TTL (s), 7 orphan TTL (s), 8 max attempts for a new job
-- Returns: {ack JSON, transitions JSON, 'new' or 'duplicate'}. The ack is {"job_id": id or null, "outcome": word}
-- where outcome is created, applied, stale, parked, recorded, ignored or duplicate.
--
-- Key builders (k_*), the ALLOWED table (jobs.EVENT_TRANSITIONS) and the helpers of lib.lua are
-- inserted when the script is loaded.

local p = ARGV[1]
local event_id = ARGV[2]
local now = tonumber(ARGV[3])
local new_job_id = ARGV[4]
local effect = cjson.decode(ARGV[5])
local event_ttl_s = tonumber(ARGV[6])
local orphan_ttl_s = tonumber(ARGV[7])
local max_attempts = tonumber(ARGV[8])

--@KEY_FUNCTIONS@

local counters = k_counters(p)
local transitions = {}

--@LIB@

local function create_job(job_id, kind, fx, from_event)
  local job_key = k_job(p, job_id)
  local agent = fx.fields.agent_id or 'unknown'
  redis.call('HSET', job_key, 'id', job_id, 'kind', kind, 'status', '', 'agent_id', agent,
             'source', fx.fields.source or 'default',
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
