-- Shared by bench/load.lua and bench/webhooks.lua: collect the threads, and print one line,
-- "BENCH_RESULT <json>", that bench/__main__.py reads. Each wrk thread runs the script in its own Lua
-- state; these globals are read back from each thread in done().

local threads = {}

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

sent = 0 -- requests written
statuses = {} -- answers by status (only when the script parses them)
first_ms = nil -- when the thread started, on CLOCK_MONOTONIC (only when the script keeps time)
last_ms = nil -- when its last answer arrived

function done(summary, latency, requests)
   local total_sent, merged, first, last = 0, {}, nil, nil
   for _, thread in ipairs(threads) do
      total_sent = total_sent + (thread:get("sent") or 0)
      for status, count in pairs(thread:get("statuses") or {}) do
         merged[status] = (merged[status] or 0) + count
      end
      local f, l = thread:get("first_ms"), thread:get("last_ms")
      if f and (first == nil or f < first) then first = f end
      if l and (last == nil or l > last) then last = l end
   end
   local parts = {}
   for status, count in pairs(merged) do
      table.insert(parts, string.format('"%s":%d', status, count))
   end
   local window = (first and last) and (last - first) or -1
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"duration_us":%d,"window_ms":%.3f,"requests":%d,"bytes":%d,"sent":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"statuses":{%s}}\n',
      summary.duration, window, summary.requests, summary.bytes, total_sent,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      table.concat(parts, ",")
   ))
end
