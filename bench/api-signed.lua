-- wrk script for bench/api: walks a file of requests minted by `api_bench` (each signed as the
-- Store servlet signs, with its own nonce), sending each once. The lines are dealt out to wrk's
-- threads (thread i takes lines i, i+T, i+2T...). A thread that runs out starts over, and those
-- replays are refused (401): wrk counts them as non-2xx, and the bench reports the run as not met.
--
-- Usage: wrk ... -s signed.lua URL -- FILE THREADS METHOD [gzip]
--   METHOD GET: each line is a path with its signed query; POST: each line is a signed form body
--   sent to URL's path. `gzip`: send Accept-Encoding: gzip, as a browser does.

local threads_made = 0

function setup(thread)
   thread:set("id", threads_made)
   threads_made = threads_made + 1
end

local lines = {}
local next_line = 1
local method = "GET"
local post_path = "/"
local form = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local get_headers = {}

function init(args)
   local file, threads = args[1], tonumber(args[2])
   method = args[3] or "GET"
   if args[4] == "gzip" then
      get_headers["Accept-Encoding"] = "gzip"
      form["Accept-Encoding"] = "gzip"
   end
   post_path = wrk.path
   local n = 0
   for line in io.lines(file) do
      if n % threads == id then
         lines[#lines + 1] = line
      end
      n = n + 1
   end
end

function request()
   local line = lines[next_line]
   next_line = next_line + 1
   if next_line > #lines then
      next_line = 1
   end
   if method == "GET" then
      return wrk.format("GET", line, get_headers)
   end
   return wrk.format("POST", post_path, form, line)
end
