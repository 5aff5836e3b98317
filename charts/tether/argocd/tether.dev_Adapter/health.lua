-- Argo CD health of a Tether Adapter (tether.dev/v1alpha1).
-- Healthy: Ready=True (the definition is valid). Degraded: Stalled=True (the
-- spec must be fixed; the message says where). Progressing: the controller
-- has not validated this generation yet.
local hs = {}
local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then return c end
  end
  return nil
end
local function says(c) return (c.reason or "") .. ": " .. (c.message or "") end

if obj.status == nil or obj.status.observedGeneration == nil
    or obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe the latest spec"
  return hs
end
local stalled, ready = condition("Stalled"), condition("Ready")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"; hs.message = says(stalled); return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"; hs.message = says(ready); return hs
end
hs.status = "Progressing"
hs.message = ready ~= nil and says(ready) or "Waiting for the Ready condition"
return hs
