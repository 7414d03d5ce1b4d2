-- wrk script for benchmarks/serving_load.py: the trivial endpoint's report in the same one-line JSON format.
function done(summary, latency, requests)
  io.write(string.format("JSON {\"requests\": %d, \"seconds\": %.3f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, " ..
    "\"errors_status\": %d, \"errors_connect\": %d, \"errors_timeout\": %d, \"errors_read\": %d}\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect, summary.errors.timeout, summary.errors.read))
end
