-- GET with the bearer token from $TOKEN (if any).
local token = os.getenv("TOKEN")
request = function()
  local headers = {}
  if token ~= nil and token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  return wrk.format("GET", nil, headers, nil)
end
