-- Argo CD health of a Tether WorkflowRun (tether.dev/v1alpha1).
-- Healthy: Succeeded=True. Degraded: Succeeded=False or Stalled=True (the run
-- failed, was compensated, failed to compensate or was cancelled).
-- Suspended: the run waits for an Approval (a human must act).
-- Progressing: the run is pending, running or compensating.
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
local succeeded, stalled, reconciling =
  condition("Succeeded"), condition("Stalled"), condition("Reconciling")
if succeeded ~= nil and succeeded.status == "True" then
  hs.status = "Healthy"; hs.message = says(succeeded); return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"; hs.message = says(stalled); return hs
end
if succeeded ~= nil and succeeded.status == "False" then
  hs.status = "Degraded"; hs.message = says(succeeded); return hs
end
if reconciling ~= nil and reconciling.status == "True" and reconciling.reason == "WaitingForApproval" then
  hs.status = "Suspended"; hs.message = says(reconciling); return hs
end
hs.status = "Progressing"
if reconciling ~= nil then
  hs.message = says(reconciling)
else
  hs.message = "Waiting for the run to start"
end
return hs
