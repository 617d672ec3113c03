-- POST /fhir/Patient with a small Patient; each request gets its own identifier value.
-- Usage: wrk ... -s create.lua http://host:port -- [token]
local counter = 0
local n = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

local headers = {["Content-Type"] = "application/fhir+json", ["Accept"] = "application/fhir+json"}

function init(args)
  if args[1] then headers["Authorization"] = "Bearer " .. args[1] end
end
local template = '{"resourceType":"Patient","identifier":[{"system":"http://bench.example.org/id",'
  .. '"value":"%d-%d"}],"name":[{"family":"Bench","given":["Wrk"]}],"gender":"female",'
  .. '"birthDate":"1990-04-01","telecom":[{"system":"phone","value":"+1-555-0100"}]}'

function request()
  n = n + 1
  return wrk.format("POST", "/fhir/Patient", headers, string.format(template, tid, n))
end
