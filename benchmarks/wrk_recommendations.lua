-- wrk script for benchmarks/serving_load.py: GET /recommendations/<user> for users read from the file named by
-- the WRK_USERS environment variable, each request with a fresh request_id (the cache is bypassed: live scoring).
local users = {}
local counter = 0
local thread_id = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function init(args)
  for line in io.lines(os.getenv("WRK_USERS")) do
    users[#users + 1] = line
  end
  counter = tid * 7919
end

function request()
  counter = counter + 1
  local user = users[(counter % #users) + 1]
  return wrk.format("GET", "/recommendations/" .. user .. "?k=10&request_id=w" .. tid .. "-" .. counter)
end

function done(summary, latency, requests)
  io.write(string.format("JSON {\"requests\": %d, \"seconds\": %.3f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, " ..
    "\"errors_status\": %d, \"errors_connect\": %d, \"errors_timeout\": %d, \"errors_read\": %d}\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect, summary.errors.timeout, summary.errors.read))
end
