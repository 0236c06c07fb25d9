-- Index an OpenClaw identifier to an existing job, and remember it on the job for purging.
--
-- ARGV: 1 key prefix, 2 job id, 3 identifier kind, 4 identifier
-- Returns: 1 when the identifier was indexed now, 0 when it was indexed before or the job is gone.

local p = ARGV[1]
local job_id = ARGV[2]
local kind = ARGV[3]
local ref = ARGV[4]
local now = 0

--@KEY_FUNCTIONS@

local counters = k_counters(p)
local transitions = {}

--@LIB@

local job_key = k_job(p, job_id)
if redis.call('EXISTS', job_key) == 0 then return 0 end
if link_ref(job_id, job_key, kind, ref) then return 1 end
return 0
