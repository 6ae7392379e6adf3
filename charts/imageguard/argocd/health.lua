-- Argo CD health check for ImageGuard's kinds (ImageScanReport, ImagePolicy,
-- ClusterImagePolicy). Findings never make an object unhealthy: a policy with non-compliant
-- workloads is Healthy (its Compliant condition says the rest), so syncs are not blocked.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for ImageGuard to reconcile"
  return hs
end
if obj.metadata.generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for ImageGuard to observe the latest spec"
  return hs
end
local ready = nil
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Stalled" and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.reason .. ": " .. (c.message or "")
    return hs
  end
  if c.type == "Ready" then
    ready = c
  end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
-- Not ready yet for a reason that resolves by itself: the first scan, or the DB, is on its way.
-- A failed scan that is retried (Reconciling) needs attention: Degraded, with its reason.
if ready.reason == "ScanPending" or ready.reason == "DatabaseUnavailable" then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
hs.message = ready.reason .. ": " .. (ready.message or "")
return hs
