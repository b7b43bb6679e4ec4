-- wrk script: POST a distinct conversation.start per request; print latency percentiles as JSON.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  counter = id * 100000000
  delay_ms = tonumber(args[1] or "0")
end

function delay()
  return delay_ms
end

request = function()
  counter = counter + 1
  local body = string.format('{"name":"conversation.start","datetime":{"created":"2014-01-01 00:00:00","sent":"2014-01-01 00:00:01"},"parameters":{"conversation_id":%d,"type":"chat","operator_id":1,"website_id":1,"group_id":1,"custom_data":{"example":"value"}}}', counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format('BENCH {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, non2xx))
end
