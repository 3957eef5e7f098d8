-- wrk -s bench/load.lua URL: wrk's own request (method, path, -H headers) on every connection, as
-- fast as wrk goes; answers are not parsed (failures still count in summary.errors).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
