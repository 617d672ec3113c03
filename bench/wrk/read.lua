-- GET /fhir/Patient/{id} for ids drawn at random from a file, one per line: either `id` (the
-- request carries the token given as the second argument, if any) or `token id` (each request
-- carries its own line's token: a different caller each time).
-- Usage: wrk ... -s read.lua http://host:port -- ids.txt [token]
local requests = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  local shared = args[2]
  for line in io.lines(args[1]) do
    local token, id = line:match("^(%S+)%s+(%S+)$")
    if not token then token, id = shared, line end
    if id and #id > 0 then
      local headers = {["Accept"] = "application/fhir+json"}
      if token then headers["Authorization"] = "Bearer " .. token end
      requests[#requests + 1] = wrk.format("GET", "/fhir/Patient/" .. id, headers)
    end
  end
  assert(#requests > 0, "no ids in " .. tostring(args[1]))
  math.randomseed(os.time() * 1000 + seed)
end

function request()
  return requests[math.random(#requests)]
end
