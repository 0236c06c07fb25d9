-- Claim a job for one re-dispatch, so that two workers (or one worker after a crash) never start
-- two different dispatches of the same attempt.
--
-- ARGV: 1 key prefix, 2 job id, 3 dispatch number, 4 now (Unix ms), 5 run id of this dispatch
-- Returns: {verdict, job JSON or status, transitions JSON}. The verdict is
--   claimed  the job was RETRYING (dispatch number - 1 done) and is now QUEUED for this dispatch;
--   resume   this dispatch was claimed before but not finished (a crash): send it again, with
--            the same run id, which the gateway deduplicates within one process;
--   skip     the job moved on (an event or another dispatch), or does not exist.

local p = ARGV[1]
local job_id = ARGV[2]
local number = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local run_id = ARGV[5]

--@KEY_FUNCTIONS@

local counters = k_counters(p)
local transitions = {}

--@LIB@

local job_key = k_job(p, job_id)
local status = field(job_key, 'status')
if status == '' then return {'skip', 'missing', '[]'} end
local done = tonumber(field(job_key, 'dispatches')) or 0

if done == number and status == 'queued' then
  return {'resume', cjson.encode(job_record(job_key)), '[]'}
end
if done ~= number - 1 or ALLOWED_DAEMON[status]['queued'] ~= true then
  return {'skip', status, '[]'}
end

redis.call('HSET', job_key, 'dispatches', number, 'run_id', run_id,
           'attempts', (tonumber(field(job_key, 'attempts')) or 0) + 1)
redis.call('HDEL', job_key, 'outcome', 'next_retry_at')
set_status(job_id, job_key, status, 'queued', 're-dispatch ' .. number .. ' claimed', '')
if link_ref(job_id, job_key, 'run', run_id) then
  drain_orphans(job_id, 'run', run_id)
end
redis.call('HINCRBY', counters, 'dispatches', 1)
return {'claimed', cjson.encode(job_record(job_key)), cjson.encode(transitions)}
