-- Helpers shared by the job scripts. Each script declares the locals p (key prefix), now (Unix
-- ms), counters (counter hash key) and transitions (a table the script returns for logging)
-- before this text is inserted. ALLOWED is jobs.EVENT_TRANSITIONS and ALLOWED_DAEMON is
-- jobs.DAEMON_TRANSITIONS, rendered when the script is loaded.

--@ALLOWED@
--@ALLOWED_DAEMON@

local function field(job_key, name)
  local value = redis.call('HGET', job_key, name)
  if value == false then return '' end
  return value
end

local function job_record(job_key)
  local flat = redis.call('HGETALL', job_key)
  local record = {}
  for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
  return record
end

-- Record a status change with its indexes, counters and history entry. Entering 'retrying'
-- or 'failed' also puts work in the gateway's outbox: a re-dispatch or a dead-letter alert.
local function set_status(job_id, job_key, old, new, reason, from_event)
  local agent = field(job_key, 'agent_id')
  local source = field(job_key, 'source')
  if source == '' then source = 'default' end
  local attempt = tonumber(field(job_key, 'attempts')) or 1
  redis.call('HSET', job_key, 'status', new, 'updated_at', now)
  if old ~= '' then
    redis.call('ZREM', k_status_index(p, old), job_id)
    redis.call('HINCRBY', k_agent_stats(p, agent), old, -1)
    redis.call('HINCRBY', k_gateway_stats(p, source), old, -1)
  else
    redis.call('SADD', k_gateways(p), source)
  end
  redis.call('ZADD', k_status_index(p, new), now, job_id)
  redis.call('HINCRBY', k_agent_stats(p, agent), new, 1)
  redis.call('HINCRBY', k_gateway_stats(p, source), new, 1)
  local entry = {at = now, from = old, to = new, reason = reason, attempt = attempt, event_id = from_event}
  redis.call('RPUSH', k_history(p, job_id), cjson.encode(entry))
  redis.call('HINCRBY', counters, 'transitions', 1)

  if new == 'retrying' then
    redis.call('HDEL', job_key, 'next_retry_at')
    redis.call('ZADD', k_outbox(p, source), now, 'retry|' .. job_id)
  elseif new == 'failed' then
    local failure = redis.call('HINCRBY', job_key, 'failures', 1)
    redis.call('ZADD', k_outbox(p, source), now, 'alert|' .. job_id .. '|' .. failure)
    redis.call('HINCRBY', counters, 'dead_letters', 1)
  end
  table.insert(transitions, {job_id = job_id, agent_id = agent, from = old, to = new,
                             attempt = attempt, reason = reason})
end

-- The job keeps the list of identifiers indexed to it, so that purging it can unindex them.
local function remember_ref(job_key, kind, ref)
  local raw = field(job_key, 'refs')
  local refs = {}
  if raw ~= '' then refs = cjson.decode(raw) end
  table.insert(refs, {kind, ref})
  redis.call('HSET', job_key, 'refs', cjson.encode(refs))
end

-- Index an identifier to a job; returns true when it was not indexed before.
local function link_ref(job_id, job_key, kind, ref)
  if redis.call('HSETNX', k_ref(p, kind), ref, job_id) == 1 then
    remember_ref(job_key, kind, ref)
    return true
  end
  return false
end

-- A failed attempt becomes 'failed' instead of 'retrying' when it was the last one allowed.
local function after_failure(job_key)
  local attempts = tonumber(field(job_key, 'attempts')) or 1
  local limit = tonumber(field(job_key, 'max_attempts')) or 1
  if attempts >= limit then
    return 'failed', ' (attempt ' .. attempts .. ' of ' .. limit .. ': dead-lettered)'
  end
  return 'retrying', ''
end

-- Applying an event's effect to a job (also used to apply parked events when a job appears).

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
  if target == 'retrying' then return after_failure(job_key) end
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
    if link_ref(job_id, job_key, pair[1], pair[2]) then
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

