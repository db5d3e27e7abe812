-- wrk script for benchmarks/weights.py: count responses by the backend that produced them,
-- per wall-clock second, so the harness can see the traffic follow each weight change.
-- The backends' /small bodies start with their name ("blue ..." or "green ..."); a response
-- that is not a 200 is counted by status. done() prints one line per second and kind:
--   TALLY <unix second> <blue|green|other|s<status>> <count>
-- The counters are flat tables (number -> number): wrk's thread:get() copies a table to the
-- done() state, but not a table of tables.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   -- globals, so that done() can read them from each thread
   blue, green, other = {}, {}, {}
   bad = {}  -- second * 1000 + status -> count
end

function response(status, headers, body)
   local sec = os.time()
   local t
   if status ~= 200 then
      local k = sec * 1000 + status
      bad[k] = (bad[k] or 0) + 1
      return
   end
   local first = body and string.byte(body, 1)
   if first == 98 then        -- "b"
      t = blue
   elseif first == 103 then   -- "g"
      t = green
   else
      t = other
   end
   t[sec] = (t[sec] or 0) + 1
end

function done(summary, latency, requests)
   for _, thread in ipairs(threads) do
      for _, name in ipairs({"blue", "green", "other"}) do
         for sec, n in pairs(thread:get(name)) do
            io.write(string.format("TALLY %d %s %d\n", sec, name, n))
         end
      end
      for k, n in pairs(thread:get("bad")) do
         io.write(string.format("TALLY %d s%d %d\n", math.floor(k / 1000), k % 1000, n))
      end
   end
end
