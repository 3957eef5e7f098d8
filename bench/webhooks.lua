-- wrk -s bench/webhooks.lua URL -- PREFIX SECONDS DATA_JSON
--
-- POSTs a Rehive delivery whose id is PREFIX-<thread>-<n>, new on every request, for SECONDS; then
-- sends nothing more, so that every request written gets its answer before wrk's own deadline
-- (run wrk a little longer than SECONDS). The answers are counted by status, and the rate is taken
-- over the time between the first request and the last answer.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local ffi = require("ffi")
ffi.cdef([[
   typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
   int clock_gettime(int clock, bench_timespec *ts);
]])
local CLOCK_MONOTONIC = 1
local now_ts = ffi.new("bench_timespec")

local function now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, now_ts)
   return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

local prefix, deadline, data = "x", 0, "{}"
local counter = 0

function init(args)
   prefix = args[1] or "x"
   data = args[3] or "{}"
   first_ms = now_ms()
   deadline = first_ms + tonumber(args[2] or "10") * 1000
end

-- wrk asks delay() before each request it sends, and calls request() once more on the first thread
-- to check what it returns (that one is never sent): so requests are counted here.
function delay()
   if now_ms() >= deadline then
      return 3600 * 1000 -- past the window: this connection sends nothing more
   end
   sent = sent + 1
   return 0
end

function request()
   counter = counter + 1
   local id = prefix .. "-" .. thread_id .. "-" .. counter
   local body = '{"id":"' .. id .. '","event":"transaction.create","company":"demo","data":' .. data .. "}"
   return wrk.format("POST", nil, nil, body)
end

function response(status, headers, body)
   last_ms = now_ms()
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
end
