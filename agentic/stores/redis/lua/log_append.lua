-- log_append.lua (after log_lib.lua): EventLog.append.
-- KEYS: seq, stream, ids (EventLogKeys order). ARGV: event id, body, event id, ...
local entries = {}
for i = 1, #ARGV, 2 do
  entries[#entries + 1] = {ARGV[i], ARGV[i + 1]}
end
return log_append(KEYS[1], KEYS[2], KEYS[3], entries)
