-- GET /fhir/Patient/{id} for ids drawn at random from a file of ids, one per line.
-- Usage: wrk ... -s read.lua http://host:port -- ids.txt
local ids = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then ids[#ids + 1] = "/fhir/Patient/" .. line end
  end
  assert(#ids > 0, "no ids in " .. tostring(args[1]))
  math.randomseed(os.time() * 1000 + seed)
end

function request()
  return wrk.format("GET", ids[math.random(#ids)], {["Accept"] = "application/fhir+json"})
end
