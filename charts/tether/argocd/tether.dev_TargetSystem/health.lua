-- Argo CD health of a Tether TargetSystem (tether.dev/v1alpha1).
-- Healthy: Ready=True (credentials loaded, health check answers, circuit
-- closed). Degraded: Stalled=True (Adapter or Secret to fix) or Degraded=True
-- (the circuit is open or the health check fails; Tether recovers by itself
-- once the target does). Progressing: the controller has not seen this
-- generation yet, or work is under way.
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
local stalled, degraded, reconciling, ready =
  condition("Stalled"), condition("Degraded"), condition("Reconciling"), condition("Ready")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"; hs.message = says(stalled); return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"; hs.message = says(degraded); return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"; hs.message = says(reconciling); return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"; hs.message = says(ready); return hs
end
hs.status = "Progressing"
hs.message = ready ~= nil and says(ready) or "Waiting for the Ready condition"
return hs
