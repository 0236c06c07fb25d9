-- Re-drive a job on an operator's request: FAILED (or, forced, a stuck QUEUED, ACTIVE or
-- ANNOUNCING job) -> RETRYING with the attempt count reset, which puts a re-dispatch in the
-- outbox. The history is kept.
--
-- ARGV: 1 key prefix, 2 job id, 3 now (Unix ms), 4 max attempts, 5 reason, 6 '1' to force
-- Returns: {verdict, status}; the verdict is 'ok', or 'refused' when the status does not allow it.

local p = ARGV[1]
local job_id = ARGV[2]
local now = tonumber(ARGV[3])
local max_attempts = ARGV[4]
local reason = ARGV[5]
local force = ARGV[6] == '1'

--@KEY_FUNCTIONS@

local counters = k_counters(p)
local transitions = {}

--@LIB@

local job_key = k_job(p, job_id)
local status = field(job_key, 'status')
if ALLOWED_DAEMON[status] == nil or ALLOWED_DAEMON[status]['retrying'] ~= true then
  return {'refused', status}
end
if status ~= 'failed' and not force then
  return {'refused', status}
end
redis.call('HSET', job_key, 'attempts', 0, 'max_attempts', max_attempts)
set_status(job_id, job_key, status, 'retrying', reason, '')
redis.call('HINCRBY', counters, 'redrives', 1)
return {'ok', 'retrying'}
