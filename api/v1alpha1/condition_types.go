package v1alpha1

// Condition types. Every object of this API carries Ready, the summary condition that kstatus and
// GitOps dashboards read; the others say which part of the work is done.
const (
	// ConditionReady is True when the object's status is current: a report holds findings matched
	// against the current vulnerability DB, a policy is valid and has been evaluated.
	ConditionReady = "Ready"

	// ConditionScanned is True when a report's image was analysed and matched. It turns False with a
	// reason that names the cause when a scan fails; earlier findings are kept.
	ConditionScanned = "Scanned"

	// ConditionCompliant is True when every workload a policy matches passes it. It is separate from
	// Ready so that findings never read as a failed or stalled object in GitOps tools.
	ConditionCompliant = "Compliant"

	// ConditionReconciling is True while work toward the spec is under way (kstatus' abnormal-true
	// condition for "in progress"): a report's first scan is pending, or a failed scan is retried
	// with backoff. Its reason is ScanPending, DatabaseUnavailable or the failed scan's reason.
	ConditionReconciling = "Reconciling"

	// ConditionStalled is True when the spec can never work as written (kstatus' abnormal-true
	// condition); it clears when the spec is fixed.
	ConditionStalled = "Stalled"

	// ConditionAdmissionPolicyReady is True when the ValidatingAdmissionPolicy and binding
	// generated from a policy are in place as the policy says, so that Kubernetes itself enforces
	// (or warns of) its registries and tags rules while ImageGuard is unreachable. False says why
	// none is: the policy only audits, has no such rule, generation is off or failed.
	ConditionAdmissionPolicyReady = "AdmissionPolicyReady"
)

// Reasons of the Ready and Scanned conditions of an ImageScanReport.
const (
	// ReasonScanSucceeded says the image was analysed and matched against the current DB.
	ReasonScanSucceeded = "ScanSucceeded"
	// ReasonJavaDBUnavailable says the image was scanned but its Java archives were not
	// analysed, for want of the Java DB: the findings lack their packages until it is loaded.
	ReasonJavaDBUnavailable = "JavaDBUnavailable"

	// ReasonScanPending says the report exists but its first scan has not finished yet (set by the
	// pod controller when it creates the report).
	ReasonScanPending = "ScanPending"

	// ReasonScanFailed is the generic reason of a failed scan; the message names the cause.
	ReasonScanFailed = "ScanFailed"

	// ReasonUnauthorized says the registry refused the credentials (or their absence).
	ReasonUnauthorized = "Unauthorized"

	// ReasonNotFound says the registry does not have the image or digest.
	ReasonNotFound = "NotFound"

	// ReasonTimeout says the scan did not finish within --scan-timeout or the registry hung.
	ReasonTimeout = "Timeout"

	// ReasonRateLimited says the registry throttled the request (HTTP 429).
	ReasonRateLimited = "RateLimited"

	// ReasonUnsupportedImage says the image is of a form the scanner refuses: too large, too many
	// layers, a decompression bomb, paths escaping the layer root, an unknown media type.
	ReasonUnsupportedImage = "UnsupportedImage"

	// ReasonAnalysisCrashed says analyses of the image stopped the controller (killed, out of
	// memory) twice; it is not analysed again before the rescan interval.
	ReasonAnalysisCrashed = "AnalysisCrashed"

	// ReasonDatabaseUnavailable says no vulnerability DB has been loaded yet.
	ReasonDatabaseUnavailable = "DatabaseUnavailable"

	// ReasonNewVulnerabilities is the reason of the Event on a report and its workloads when a
	// re-match found vulnerabilities the findings before did not have.
	ReasonNewVulnerabilities = "NewVulnerabilities"

	// ReasonReanalysisFailed is the reason of the Event on a report when analysing its image again
	// (maxAnalysisAge) failed; the kept inventory serves meanwhile.
	ReasonReanalysisFailed = "ReanalysisFailed"
)

// Reasons of the Ready, Compliant and Stalled conditions of ImagePolicy and ClusterImagePolicy.
const (
	// ReasonEvaluated says the policy is valid and every matched workload was evaluated.
	ReasonEvaluated = "Evaluated"

	// ReasonInvalidPolicy says the spec can never be evaluated (a bad glob, an unreadable key).
	ReasonInvalidPolicy = "InvalidPolicy"

	// ReasonAllCompliant says every matched workload passes the policy.
	ReasonAllCompliant = "AllCompliant"

	// ReasonNonCompliant says at least one matched workload fails the policy; status.nonCompliant
	// lists them.
	ReasonNonCompliant = "NonCompliant"
)

// Reasons of the AdmissionPolicyReady condition of ImagePolicy and ClusterImagePolicy (and
// ReasonInvalidPolicy).
const (
	// ReasonAdmissionPolicyGenerated says the generated ValidatingAdmissionPolicy and binding are
	// in place.
	ReasonAdmissionPolicyGenerated = "Generated"

	// ReasonNotEnforcing says the policy only audits: nothing is refused or warned of at admission.
	ReasonNotEnforcing = "NotEnforcing"

	// ReasonNoGeneratedRules says the policy has no rule a ValidatingAdmissionPolicy can express
	// (registries.allowed, tags.disallowLatest, tags.requireDigest): only the webhook enforces it.
	ReasonNoGeneratedRules = "NoExpressibleRules"

	// ReasonExemptNamespace says admission never checks the policy's namespace.
	ReasonExemptNamespace = "ExemptNamespace"

	// ReasonGenerationDisabled says --generate-admission-policies is false.
	ReasonGenerationDisabled = "GenerationDisabled"

	// ReasonAdmissionPolicyUnsupported says the API server does not serve
	// admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (Kubernetes before 1.30).
	ReasonAdmissionPolicyUnsupported = "Unsupported"

	// ReasonAdmissionPolicyTooLarge says the policy's globs are too many and too long for a CEL
	// expression the API server takes: only the webhook enforces it.
	ReasonAdmissionPolicyTooLarge = "TooLarge"

	// ReasonGenerationFailed says writing the generated objects failed; it is retried.
	ReasonGenerationFailed = "GenerationFailed"

	// ReasonTypeCheckFailed says the API server's type check of the generated policy warned.
	ReasonTypeCheckFailed = "TypeCheckFailed"
)
