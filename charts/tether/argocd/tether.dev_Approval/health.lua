-- Argo CD health of a Tether Approval (tether.dev/v1alpha1).
-- Healthy: the run took the decision (Applied=True). Degraded: it could not
-- (Applied=False: the run or step does not exist or is not waiting).
-- Progressing: the run has not taken it yet.
local hs = {}
local applied = nil
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Applied" then applied = c end
  end
end
if applied == nil then
  hs.status = "Progressing"; hs.message = "Waiting for the run to take the decision"; return hs
end
local says = (applied.reason or "") .. ": " .. (applied.message or "")
if applied.status == "True" then
  hs.status = "Healthy"; hs.message = says; return hs
end
hs.status = "Degraded"; hs.message = says
return hs
