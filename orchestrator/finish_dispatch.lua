-- Record the result of one re-dispatch call to the gateway.
--
-- ARGV: 1 key prefix, 2 job id, 3 dispatch number, 4 now (Unix ms), 5 result, 6 reason,
--       7 error text, 8 fields to set (JSON object), 9 identifiers to index (JSON [[kind, id]])
-- The result is 'accepted' (QUEUED -> ACTIVE), 'transient' (RETRYING, or FAILED when attempts
-- are spent) or 'permanent' (FAILED at once).
-- Returns: {verdict, status, transitions JSON}; the verdict is 'done', or 'skip' when the job is
-- no longer QUEUED for this dispatch because an event moved it first.

local p = ARGV[1]
local job_id = ARGV[2]
local number = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local result = ARGV[5]
local reason = ARGV[6]
local error_text = ARGV[7]
local fields = cjson.decode(ARGV[8])
local links = cjson.decode(ARGV[9])

--@KEY_FUNCTIONS@

local counters = k_counters(p)
local transitions = {}

--@LIB@

local job_key = k_job(p, job_id)
local status = field(job_key, 'status')
local done = tonumber(field(job_key, 'dispatches')) or 0
if status ~= 'queued' or done ~= number then
  return {'skip', status, '[]'}
end

for name, value in pairs(fields) do
  redis.call('HSET', job_key, name, value)
end

if result ~= 'accepted' then
  local target, note = 'failed', ''
  if result == 'transient' then target, note = after_failure(job_key) end
  redis.call('HSET', job_key, 'last_error', error_text)
  set_status(job_id, job_key, status, target, reason .. note, '')
  return {'done', target, cjson.encode(transitions)}
end

set_status(job_id, job_key, status, 'active', reason, '')
-- Events of the new run may have arrived first and been parked; they apply now, on top.
for _, pair in ipairs(links) do
  if link_ref(job_id, job_key, pair[1], pair[2]) then
    drain_orphans(job_id, pair[1], pair[2])
  end
end
return {'done', field(job_key, 'status'), cjson.encode(transitions)}
