-- Cycles through pre-signed bodies (one "signature<TAB>body" per line of BODIES), so every
-- request is a different body: the inbox deduplicates identical ones, which would flatter us.
local bodies, signatures, n = {}, {}, 0
local path = os.getenv("BODIES")
for line in io.lines(path) do
  local tab = line:find("\t", 1, true)
  n = n + 1
  signatures[n] = line:sub(1, tab - 1)
  bodies[n] = line:sub(tab + 1)
end
local i = 0
request = function()
  i = i % n + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Hub-Signature-256"] = signatures[i],
  }, bodies[i])
end
