-- wrk script for bench/bench_webhooks.py: replays pre-built raw HTTP requests.
-- The benchmark writes one file per wrk thread (REQUESTS_PREFIX .. thread number .. ".bin"), each a run of
-- records: a 4-byte big-endian length, then that many bytes of request. Each request is sent once; a thread
-- that runs out starts again from its first, and the daemon answers those repeats as duplicates (200, no
-- second effect), so the benchmark counts what the daemon enqueued, not what wrk sent.
local prefix = os.getenv("REQUESTS_PREFIX")
local counter = 1

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  requests = {}
  local f = assert(io.open(prefix .. id .. ".bin", "rb"))
  local data = f:read("*a")
  f:close()
  local pos = 1
  while pos < #data do
    local b1, b2, b3, b4 = data:byte(pos, pos + 3)
    local len = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    requests[#requests + 1] = data:sub(pos + 4, pos + 3 + len)
    pos = pos + 4 + len
  end
  i = 0
end

function request()
  i = i + 1
  if i > #requests then i = 1 end
  return requests[i]
end
