-- POST /v1/jobs with a fixed multipart body; the ids of accepted jobs go to a file per thread.
-- Arguments (after --): the body file, the boundary, the prefix of the id files.
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

local ids

function init(args)
   local f = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.path = "/v1/jobs"
   wrk.body = f:read("*a")
   f:close()
   wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. args[2]
   ids = assert(io.open(args[3] .. "." .. tid, "w"))
   ids:setvbuf("line")  -- wrk exits without closing Lua files
end

function response(status, headers, body)
   if status == 202 then
      ids:write(body:match('"id":"([^"]+)"'), "\n")
   end
end
