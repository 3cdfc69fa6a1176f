-- GET /v1/jobs/{id}, cycling through the ids in a file (argument after --); threads start apart.
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

local paths = {}
local i = 0

function init(args)
   for id in io.lines(args[1]) do
      paths[#paths + 1] = "/v1/jobs/" .. id
   end
   assert(#paths > 0, "no job ids to poll")
   i = (tid * 7919) % #paths
end

function request()
   i = i % #paths + 1
   return wrk.format("GET", paths[i])
end
