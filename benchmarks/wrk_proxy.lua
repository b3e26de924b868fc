-- wrk script: absolute-form proxy requests (GET http://origin/ HTTP/1.1), as a browser
-- configured with an HTTP proxy sends them. The target comes from the environment:
--   JG_TARGET=http://127.0.0.1:8000/ wrk -s benchmarks/wrk_proxy.lua http://127.0.0.1:8080/
local target = os.getenv("JG_TARGET") or "http://127.0.0.1:8000/"
local authority = target:match("^%a+://([^/]+)")
wrk.method = "GET"
wrk.path = target
wrk.headers["Host"] = authority
wrk.headers["Accept"] = "*/*"

-- Non-2xx/3xx answers would make the figures meaningless (a 502 is cheap): print their
-- count (wrk's own tally; a response() callback would cost wrk Lua work per request).
function done(summary, latency, requests)
  io.write(string.format("JG non-2xx %d\n", summary.errors.status))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format("JG p%d_us %d\n", p, latency:percentile(p)))
  end
end
