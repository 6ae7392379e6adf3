package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Enforcement says what ImageGuard does with a workload that breaks a policy.
// +kubebuilder:validation:Enum=Audit;Warn;Enforce
type Enforcement string

const (
	// EnforcementAudit reports non-compliance in status, PolicyReports, events and metrics only.
	EnforcementAudit Enforcement = "Audit"
	// EnforcementWarn also returns admission warnings to the client, but admits.
	EnforcementWarn Enforcement = "Warn"
	// EnforcementEnforce refuses non-compliant pods and workloads at admission.
	EnforcementEnforce Enforcement = "Enforce"
)

// UnscannedAction says what admission does with an image whose digest has not been scanned yet.
// +kubebuilder:validation:Enum=Allow;Deny
type UnscannedAction string

const (
	// UnscannedAllow admits the image and queues its scan.
	UnscannedAllow UnscannedAction = "Allow"
	// UnscannedDeny refuses the image until its first scan finished; the scan is queued at once.
	UnscannedDeny UnscannedAction = "Deny"
)

// ImageMatch selects the workloads and images a namespaced policy applies to. An empty match
// selects every workload and image in the policy's namespace.
type ImageMatch struct {
	// Images are globs of image references (host/path, optionally with :tag), e.g.
	// registry.example.com/team/*. A workload is matched when any of its images matches one.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=512
	Images []string `json:"images,omitempty"`

	// Selector selects workloads by their labels.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
}

// ClusterImageMatch selects the workloads and images a cluster policy applies to, in every
// namespace its namespaceSelector selects (all namespaces when it is absent).
type ClusterImageMatch struct {
	ImageMatch `json:",inline"`

	// NamespaceSelector selects the namespaces by their labels.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
}

// RegistryRule restricts where images may come from.
type RegistryRule struct {
	// Allowed are globs of host/path that images must match, e.g. registry.example.com/* or
	// *.dkr.ecr.eu-west-1.amazonaws.com/team/*. A '*' never crosses a '/' or a host's end.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=512
	Allowed []string `json:"allowed"`
}

// TagRule restricts how images are referred to.
type TagRule struct {
	// DisallowLatest refuses the tag latest; a reference without tag or digest counts as latest.
	// +optional
	DisallowLatest bool `json:"disallowLatest,omitempty"`

	// RequireDigest requires every image to be referred to by digest (image@sha256:...).
	// +optional
	RequireDigest bool `json:"requireDigest,omitempty"`
}

// VulnerabilityRule limits the findings an image may have. An absent maximum means no limit.
type VulnerabilityRule struct {
	// MaxCritical is the highest number of critical findings allowed.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxCritical *int32 `json:"maxCritical,omitempty"`

	// MaxHigh is the highest number of high findings allowed.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxHigh *int32 `json:"maxHigh,omitempty"`

	// MaxMedium is the highest number of medium findings allowed.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxMedium *int32 `json:"maxMedium,omitempty"`

	// MaxLow is the highest number of low findings allowed.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxLow *int32 `json:"maxLow,omitempty"`

	// FixableOnly counts only findings that have a fixed version.
	// +optional
	FixableOnly bool `json:"fixableOnly,omitempty"`

	// MaxScanAge is how old the vulnerability knowledge of an image's findings may be, e.g. 24h:
	// the rule passes while the image's report was matched against a DB built within it (a report
	// is re-matched against every new DB, written or not), and fails with reason NotScanned,
	// ScanFailed (the last match failed), ScanTooOld (matched against an older DB than the one in
	// use) or DatabaseStale (the DB in use is older than this, or than --db-max-age). Trivy's
	// public DB is built every 6 hours: a limit under about 12h fails between builds.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	MaxScanAge *metav1.Duration `json:"maxScanAge,omitempty"`

	// MaxAnalysisAge is how old an image's package inventory (its last pull and analysis) may be,
	// e.g. 720h, at least 1h. ImageGuard analyses an image again, in the background, once its
	// inventory is half that old, for the reports of the namespaces such a policy applies to; the
	// rule fails with reason AnalysisTooOld only when that re-analysis keeps failing (the findings
	// of the kept inventory stay in force meanwhile).
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h')",message="maxAnalysisAge must be at least 1h: each re-analysis pulls the image again"
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	MaxAnalysisAge *metav1.Duration `json:"maxAnalysisAge,omitempty"`
}

// VulnerabilityException accepts one vulnerability, in some images, until it expires.
type VulnerabilityException struct {
	// ID of the accepted vulnerability, e.g. CVE-2024-1234.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._:-]*$`
	ID string `json:"id"`

	// Images are globs of the images the exception covers; empty covers every image the policy
	// matches.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=512
	Images []string `json:"images,omitempty"`

	// Expires is when the exception stops applying (RFC 3339). It stops by itself at that time.
	// +required
	Expires metav1.Time `json:"expires"`

	// Reason records why the vulnerability is accepted, for auditors.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Reason string `json:"reason"`
}

// SecretKeySelector names a key of a Secret.
type SecretKeySelector struct {
	// Name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Namespace of the Secret: for an ImagePolicy always the policy's own; for a
	// ClusterImagePolicy it defaults to the controller's namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`

	// Key in the Secret's data that holds the PEM public key.
	// +optional
	// +kubebuilder:default=cosign.pub
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key,omitempty"`
}

// SignatureKey is a public key that may have signed an image: inline PEM or a Secret.
// +kubebuilder:validation:XValidation:rule="has(self.publicKey) != has(self.secretRef)",message="a key sets exactly one of publicKey and secretRef"
type SignatureKey struct {
	// PublicKey is a PEM-encoded public key.
	// +optional
	// +kubebuilder:validation:MaxLength=16384
	PublicKey string `json:"publicKey,omitempty"`

	// SecretRef names a Secret key that holds a PEM-encoded public key.
	// +optional
	SecretRef *SecretKeySelector `json:"secretRef,omitempty"`
}

// KeylessIdentity is who may have signed an image with a short-lived certificate of a Fulcio CA
// of the trust root: the certificate's OIDC issuer and subject (its SAN: an email, a URI such as a
// CI workflow's), each exact or a regular expression (RE2, anchored: it must match the whole value).
// +kubebuilder:validation:XValidation:rule="has(self.issuer) != has(self.issuerRegExp)",message="an identity sets exactly one of issuer and issuerRegExp"
// +kubebuilder:validation:XValidation:rule="has(self.subject) != has(self.subjectRegExp)",message="an identity sets exactly one of subject and subjectRegExp"
type KeylessIdentity struct {
	// Issuer is the OIDC issuer, exactly (https://token.actions.githubusercontent.com).
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Issuer string `json:"issuer,omitempty"`

	// IssuerRegExp matches the whole OIDC issuer.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	IssuerRegExp string `json:"issuerRegExp,omitempty"`

	// Subject is the certificate's subject alternative name, exactly.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Subject string `json:"subject,omitempty"`

	// SubjectRegExp matches the whole subject alternative name.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	SubjectRegExp string `json:"subjectRegExp,omitempty"`
}

// TrustRootKind is where a trust root is kept.
// +kubebuilder:validation:Enum=ConfigMap;Secret
type TrustRootKind string

// Kinds of objects a trust root is read from.
const (
	TrustRootConfigMap TrustRootKind = "ConfigMap"
	TrustRootSecret    TrustRootKind = "Secret"
)

// TrustRootSource names the ConfigMap or Secret key that holds a Sigstore trusted root
// (trusted_root.json: Fulcio CAs, Rekor and CT log keys, timestamp authorities).
type TrustRootSource struct {
	// Kind of the object: ConfigMap or Secret.
	// +required
	Kind TrustRootKind `json:"kind"`

	// Name of the object.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Namespace of the object: for an ImagePolicy always the policy's own; for a
	// ClusterImagePolicy it defaults to the controller's namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`

	// Key of the object's data that holds the trusted root.
	// +optional
	// +kubebuilder:default=trusted_root.json
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key,omitempty"`
}

// SignatureRule requires images to be signed: one signature of the image's digest (a cosign
// signature tag, or a Sigstore bundle referring to it) that verifies against one of the
// authorities, a key or a keyless identity.
// +kubebuilder:validation:XValidation:rule="!self.required || (has(self.keys) && size(self.keys) > 0) || (has(self.keyless) && size(self.keyless) > 0)",message="signatures must name at least one key or keyless identity when they are required"
// +kubebuilder:validation:XValidation:rule="!has(self.keyless) || size(self.keyless) == 0 || has(self.trustRoot)",message="signatures.keyless needs signatures.trustRoot"
type SignatureRule struct {
	// Required makes a valid signature by one of the authorities a condition of compliance.
	// +optional
	Required bool `json:"required,omitempty"`

	// Keys that are trusted to sign. A signature by a key is checked against the key alone: no
	// trust root, transparency log or timestamp is consulted.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Keys []SignatureKey `json:"keys,omitempty"`

	// Keyless identities that are trusted to sign, with certificates of the trust root's Fulcio
	// CAs.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Keyless []KeylessIdentity `json:"keyless,omitempty"`

	// TrustRoot is the Sigstore trusted root that keyless signatures are checked against. Nothing
	// else is trusted: the public Sigstore instance only when this trusted root names it.
	// +optional
	TrustRoot *TrustRootSource `json:"trustRoot,omitempty"`

	// RequireTransparencyLog requires a keyless signature to be in one of the trust root's
	// transparency logs (a verified inclusion proof or promise). Default true.
	// +optional
	RequireTransparencyLog *bool `json:"requireTransparencyLog,omitempty"`

	// RequireSignedTimestamp requires a keyless signature to carry an RFC 3161 timestamp of one
	// of the trust root's timestamp authorities, which the certificate must be valid at. Default
	// true. When false, the transparency log's time of entry dates the signature; with neither, the
	// certificate must be valid now (short-lived certificates then fail after minutes).
	// +optional
	RequireSignedTimestamp *bool `json:"requireSignedTimestamp,omitempty"`
}

// PolicyRules are the conditions an image must meet. A workload passes when all its images pass
// every rule that is set.
type PolicyRules struct {
	// Registries restricts where images may come from.
	// +optional
	Registries *RegistryRule `json:"registries,omitempty"`

	// Tags restricts how images are referred to.
	// +optional
	Tags *TagRule `json:"tags,omitempty"`

	// Vulnerabilities limits the findings of each image.
	// +optional
	Vulnerabilities *VulnerabilityRule `json:"vulnerabilities,omitempty"`

	// Exceptions accept named vulnerabilities until they expire.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	Exceptions []VulnerabilityException `json:"exceptions,omitempty"`

	// Signatures requires images to be signed.
	// +optional
	Signatures *SignatureRule `json:"signatures,omitempty"`

	// OnUnscanned says what admission does with an image not scanned yet.
	// +optional
	// +kubebuilder:default=Allow
	OnUnscanned UnscannedAction `json:"onUnscanned,omitempty"`
}

// ImagePolicySpec says which workloads of its namespace a policy applies to and what they must meet.
type ImagePolicySpec struct {
	// Match selects the workloads and images the policy applies to.
	// +optional
	Match ImageMatch `json:"match,omitempty"`

	// Enforcement says what happens to a workload that breaks the policy.
	// +optional
	// +kubebuilder:default=Audit
	Enforcement Enforcement `json:"enforcement,omitempty"`

	// Rules the images must meet.
	// +required
	Rules PolicyRules `json:"rules"`
}

// ClusterImagePolicySpec says which workloads of the cluster a policy applies to and what they
// must meet.
type ClusterImagePolicySpec struct {
	// Match selects the namespaces, workloads and images the policy applies to.
	// +optional
	Match ClusterImageMatch `json:"match,omitempty"`

	// Enforcement says what happens to a workload that breaks the policy.
	// +optional
	// +kubebuilder:default=Audit
	Enforcement Enforcement `json:"enforcement,omitempty"`

	// Rules the images must meet.
	// +required
	Rules PolicyRules `json:"rules"`
}

// PolicySummary counts the workloads a policy matched.
type PolicySummary struct {
	// Workloads matched by the policy.
	Workloads int32 `json:"workloads"`
	// Compliant workloads.
	Compliant int32 `json:"compliant"`
	// NonCompliant workloads.
	NonCompliant int32 `json:"nonCompliant"`
}

// NonCompliantWorkload is a workload that breaks a policy, with the reasons.
type NonCompliantWorkload struct {
	// Namespace of the workload.
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// Kind of the workload, e.g. Deployment.
	Kind string `json:"kind"`
	// Name of the workload.
	Name string `json:"name"`
	// Reason is the reason of its first failing rule, e.g. UntrustedRegistry,
	// TooManyVulnerabilities, DatabaseStale.
	// +optional
	Reason string `json:"reason,omitempty"`
	// Reasons name each failing image and rule.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Reasons []string `json:"reasons,omitempty"`
}

// ImagePolicyStatus is the verdict of a policy over the workloads it matches.
type ImagePolicyStatus struct {
	// Conditions: Ready (valid and evaluated), Compliant (every matched workload passes).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// ObservedGeneration is the spec generation the verdict was computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Summary counts the matched workloads.
	// +optional
	Summary *PolicySummary `json:"summary,omitempty"`

	// NonCompliant lists the workloads that break the policy, sorted, cut at 100 entries; the
	// summary has the exact count.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=100
	NonCompliant []NonCompliantWorkload `json:"nonCompliant,omitempty"`
}

// ImagePolicy says what images the workloads of its namespace may run.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ipol,categories=imageguard
// +kubebuilder:printcolumn:name="Enforcement",type=string,JSONPath=`.spec.enforcement`
// +kubebuilder:printcolumn:name="Workloads",type=integer,JSONPath=`.status.summary.workloads`
// +kubebuilder:printcolumn:name="Non-Compliant",type=integer,JSONPath=`.status.summary.nonCompliant`
// +kubebuilder:printcolumn:name="Compliant",type=string,JSONPath=`.status.conditions[?(@.type=="Compliant")].status`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ImagePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec ImagePolicySpec `json:"spec"`

	// +optional
	Status ImagePolicyStatus `json:"status,omitempty"`
}

// ImagePolicyList is a list of ImagePolicies.
//
// +kubebuilder:object:root=true
type ImagePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ImagePolicy `json:"items"`
}

// ClusterImagePolicy says what images the workloads of the selected namespaces may run.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cipol,categories=imageguard
// +kubebuilder:printcolumn:name="Enforcement",type=string,JSONPath=`.spec.enforcement`
// +kubebuilder:printcolumn:name="Workloads",type=integer,JSONPath=`.status.summary.workloads`
// +kubebuilder:printcolumn:name="Non-Compliant",type=integer,JSONPath=`.status.summary.nonCompliant`
// +kubebuilder:printcolumn:name="Compliant",type=string,JSONPath=`.status.conditions[?(@.type=="Compliant")].status`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterImagePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec ClusterImagePolicySpec `json:"spec"`

	// +optional
	Status ImagePolicyStatus `json:"status,omitempty"`
}

// ClusterImagePolicyList is a list of ClusterImagePolicies.
//
// +kubebuilder:object:root=true
type ClusterImagePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterImagePolicy `json:"items"`
}

// GetConditions returns the policy's conditions.
func (p *ImagePolicy) GetConditions() []metav1.Condition { return p.Status.Conditions }

// SetConditions sets the policy's conditions.
func (p *ImagePolicy) SetConditions(c []metav1.Condition) { p.Status.Conditions = c }

// SetObservedGeneration records the spec generation the verdict was computed for.
func (p *ImagePolicy) SetObservedGeneration(g int64) { p.Status.ObservedGeneration = g }

// GetConditions returns the policy's conditions.
func (p *ClusterImagePolicy) GetConditions() []metav1.Condition { return p.Status.Conditions }

// SetConditions sets the policy's conditions.
func (p *ClusterImagePolicy) SetConditions(c []metav1.Condition) { p.Status.Conditions = c }

// SetObservedGeneration records the spec generation the verdict was computed for.
func (p *ClusterImagePolicy) SetObservedGeneration(g int64) { p.Status.ObservedGeneration = g }

func init() {
	register(&ImagePolicy{}, &ImagePolicyList{}, &ClusterImagePolicy{}, &ClusterImagePolicyList{})
}
