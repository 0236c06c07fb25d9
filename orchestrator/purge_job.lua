-- Delete one job with its history, index entries, identifier links and per-agent count.
--
-- ARGV: 1 key prefix, 2 job id
-- Returns: 1 when the job was deleted, 0 when it did not exist.

local p = ARGV[1]
local job_id = ARGV[2]

--@KEY_FUNCTIONS@

local job_key = k_job(p, job_id)
local fields = redis.call('HMGET', job_key, 'status', 'agent_id', 'refs', 'source')
local status, agent, refs, source = fields[1], fields[2], fields[3], fields[4] or 'default' 
if not status then return 0 end

if refs then
  for _, pair in ipairs(cjson.decode(refs)) do
    local ref_key = k_ref(p, pair[1])
    if redis.call('HGET', ref_key, pair[2]) == job_id then
      redis.call('HDEL', ref_key, pair[2])
    end
  end
end
if status ~= '' then
  redis.call('ZREM', k_status_index(p, status), job_id)
  redis.call('HINCRBY', k_agent_stats(p, agent), status, -1)
  redis.call('HINCRBY', k_gateway_stats(p, source), status, -1)
end
redis.call('ZREM', k_agent_index(p, agent), job_id)
redis.call('ZREM', k_all_jobs(p), job_id)
redis.call('DEL', job_key, k_history(p, job_id))
redis.call('HINCRBY', k_counters(p), 'jobs_purged', 1)
return 1
