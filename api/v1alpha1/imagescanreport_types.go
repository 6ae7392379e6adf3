package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Severity is a vulnerability severity as Trivy reports it.
// +kubebuilder:validation:Enum=CRITICAL;HIGH;MEDIUM;LOW;UNKNOWN
type Severity string

// The severities, from the most to the least severe.
const (
	SeverityCritical Severity = "CRITICAL"
	SeverityHigh     Severity = "HIGH"
	SeverityMedium   Severity = "MEDIUM"
	SeverityLow      Severity = "LOW"
	SeverityUnknown  Severity = "UNKNOWN"
)

// Severities lists every severity, from the most to the least severe.
var Severities = []Severity{SeverityCritical, SeverityHigh, SeverityMedium, SeverityLow, SeverityUnknown}

// ImageScanReportSpec names the image a report is about. The pod controller sets it; image and
// digest never change once set, so a report is always about one immutable image.
// +kubebuilder:validation:XValidation:rule="self.image == oldSelf.image",message="spec.image is immutable"
// +kubebuilder:validation:XValidation:rule="self.digest == oldSelf.digest",message="spec.digest is immutable"
// +kubebuilder:validation:XValidation:rule="has(self.platform) == has(oldSelf.platform) && (!has(self.platform) || self.platform == oldSelf.platform)",message="spec.platform is immutable"
type ImageScanReportSpec struct {
	// Image is the repository without tag or digest, e.g. registry.example.com/team/app.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9._:-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$`
	Image string `json:"image"`

	// Digest is the manifest digest of the image the pods run: an image manifest, or a
	// multi-platform index whose image for Platform is scanned.
	// +required
	// +kubebuilder:validation:Pattern=`^sha256:[a-f0-9]{64}$`
	Digest string `json:"digest"`

	// Platform is the platform, os/architecture[/variant], whose image of an index digest the
	// report is about: that of the nodes the pods run on. Empty means linux/amd64. An image
	// manifest is one image whatever the platform.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$`
	Platform string `json:"platform,omitempty"`

	// Tags are the tags pods used to refer to this digest, sorted.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=128
	Tags []string `json:"tags,omitempty"`
}

// Workload is a top-level owner of pods that run a report's image: a Deployment (through its
// ReplicaSet), a CronJob (through its Job), a StatefulSet, DaemonSet, Job, or a bare Pod.
type Workload struct {
	// Kind of the workload, e.g. Deployment.
	// +required
	// +kubebuilder:validation:MinLength=1
	Kind string `json:"kind"`

	// Name of the workload in the report's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`

	// Containers of the workload's pods that run the image, including init and ephemeral ones.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	Containers []string `json:"containers,omitempty"`
}

// OperatingSystem is the OS the scanner detected in an image.
type OperatingSystem struct {
	// Family of the OS, e.g. debian, alpine.
	// +optional
	Family string `json:"family,omitempty"`

	// Name is the OS version, e.g. 12.5 or 3.22.1.
	// +optional
	Name string `json:"name,omitempty"`

	// EOSL is true when the OS version is past its end of service life, so its vulnerabilities are
	// no longer tracked.
	// +optional
	EOSL bool `json:"eosl,omitempty"`
}

// Scanner names the scanner that produced a report.
type Scanner struct {
	// Name of the scanner: Trivy.
	// +optional
	Name string `json:"name,omitempty"`

	// Version of the scanner library.
	// +optional
	Version string `json:"version,omitempty"`
}

// VulnerabilityDB identifies the vulnerability DB a report was matched against.
type VulnerabilityDB struct {
	// UpdatedAt is when the DB was built, from its metadata.
	// +optional
	UpdatedAt *metav1.Time `json:"updatedAt,omitempty"`

	// Digest of the DB artifact, or of the local DB file for --db-path.
	// +optional
	Digest string `json:"digest,omitempty"`
}

// VulnerabilitySummary counts findings by severity. The counts are exact even when the
// vulnerability list is cut to keep the object small.
type VulnerabilitySummary struct {
	// Critical findings.
	Critical int32 `json:"critical"`
	// High findings.
	High int32 `json:"high"`
	// Medium findings.
	Medium int32 `json:"medium"`
	// Low findings.
	Low int32 `json:"low"`
	// Unknown findings: severity not rated by any source.
	Unknown int32 `json:"unknown"`
	// Fixable findings: those with a fixed version.
	Fixable int32 `json:"fixable"`
	// Total findings.
	Total int32 `json:"total"`
}

// counter returns the count of severity; an unrated or unknown severity counts as Unknown.
func (s *VulnerabilitySummary) counter(severity Severity) *int32 {
	switch severity {
	case SeverityCritical:
		return &s.Critical
	case SeverityHigh:
		return &s.High
	case SeverityMedium:
		return &s.Medium
	case SeverityLow:
		return &s.Low
	default:
		return &s.Unknown
	}
}

// Count returns the number of findings of severity.
func (s *VulnerabilitySummary) Count(severity Severity) int32 { return *s.counter(severity) }

// Add adds n findings of severity (n may be negative); Total and Fixable are left to the caller.
func (s *VulnerabilitySummary) Add(severity Severity, n int32) { *s.counter(severity) += n }

// Vulnerability is one finding: a vulnerability in one installed package.
type Vulnerability struct {
	// ID of the vulnerability, e.g. CVE-2024-1234 or GHSA-xxxx-xxxx-xxxx.
	// +required
	ID string `json:"id"`

	// Package is the name of the installed package.
	// +required
	Package string `json:"package"`

	// InstalledVersion of the package.
	// +optional
	InstalledVersion string `json:"installedVersion,omitempty"`

	// FixedVersion lists the versions that fix it; empty when no fix exists.
	// +optional
	FixedVersion string `json:"fixedVersion,omitempty"`

	// Severity of the finding.
	// +required
	Severity Severity `json:"severity"`

	// Status of the finding as the vendor reports it, e.g. fixed, affected, will_not_fix.
	// +optional
	Status string `json:"status,omitempty"`

	// Title is a one-line description.
	// +optional
	Title string `json:"title,omitempty"`

	// PrimaryURL is where to read about it.
	// +optional
	PrimaryURL string `json:"primaryURL,omitempty"`

	// Target is where in the image the package was found: the OS, or a file such as
	// usr/local/bin/app or node_modules/lodash/package.json.
	// +optional
	Target string `json:"target,omitempty"`

	// PackageType is the kind of package: debian, alpine, npm, gobinary, ...
	// +optional
	PackageType string `json:"packageType,omitempty"`
}

// MaxChangeIDs bounds FindingChanges.NewIDs.
const MaxChangeIDs = 10

// FindingChanges is what the last change of a report's findings brought: the findings that
// appeared and those that went, against the findings before (those of the previous DB for a
// re-match). A re-match that changes nothing leaves it as it was.
type FindingChanges struct {
	// New counts the findings that appeared.
	New int32 `json:"new"`

	// Fixed counts the findings that went (fixed, withdrawn or no longer matched).
	Fixed int32 `json:"fixed"`

	// NewIDs are the ids of the first new findings, most severe first.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=10
	NewIDs []string `json:"newIDs,omitempty"`

	// DetectedAt is when the change was found.
	// +optional
	DetectedAt *metav1.Time `json:"detectedAt,omitempty"`

	// VulnerabilityDB is the digest of the DB the change was found with.
	// +optional
	VulnerabilityDB string `json:"vulnerabilityDB,omitempty"`
}

// The reasons a signature check fails, as SignatureCheck.reason, a policy's nonCompliant entry
// and its PolicyReport result give them.
const (
	// ReasonSignatureMissing: the image has no signature at all (no cosign signature tag, no
	// Sigstore bundle referring to it).
	ReasonSignatureMissing = "SignatureMissing"
	// ReasonSignatureInvalid: signatures exist, but none verifies against an authority: another
	// key, another digest, a tampered payload, a certificate not of the trust root's CAs or not
	// valid at the signature's time, a missing transparency-log entry or timestamp.
	ReasonSignatureInvalid = "SignatureInvalid"
	// ReasonIdentityMismatch: a keyless signature verifies against the trust root, but its
	// certificate names another identity than the policy's.
	ReasonIdentityMismatch = "IdentityMismatch"
	// ReasonTrustRootInvalid: the policy's keys or trust root cannot be read or parsed.
	ReasonTrustRootInvalid = "TrustRootInvalid"
	// ReasonRegistryError: the registry did not answer the signature read (401, 403, 5xx, timeout).
	ReasonRegistryError = "RegistryError"
)

// MaxSignatureChecks bounds ImageScanReportStatus.Signatures.
const MaxSignatureChecks = 16

// Where a verified signature was found.
const (
	// SignatureSourceTag is cosign's sha256-<digest>.sig tag.
	SignatureSourceTag = "Tag"
	// SignatureSourceReferrer is a Sigstore bundle that refers to the image (OCI 1.1 referrers, or
	// the referrers tag schema).
	SignatureSourceReferrer = "Referrer"
)

// SignatureCheck is the verdict of one policy's signature authorities on the report's digest.
type SignatureCheck struct {
	// Authorities identifies the authority set: a digest of the policy's keys, keyless identities,
	// trust root and options. Policies with the same set share the check.
	// +kubebuilder:validation:MaxLength=64
	Authorities string `json:"authorities"`

	// Policy is a policy that requires this set (the first by name when several do).
	// +kubebuilder:validation:MaxLength=512
	Policy string `json:"policy"`

	// Verified is true when one signature verified against one of the authorities.
	Verified bool `json:"verified"`

	// Reason says why none verified: SignatureMissing, SignatureInvalid, IdentityMismatch,
	// TrustRootInvalid or RegistryError.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason,omitempty"`

	// Message says what was found and checked.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`

	// SignedBy holds, per authority that verified, who signed.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	SignedBy []Signer `json:"signedBy,omitempty"`

	// CheckedAt is when the signatures were last read and verified with this verdict. A check
	// that gives the same verdict again is written at most every --report-refresh-interval.
	CheckedAt metav1.Time `json:"checkedAt"`
}

// Signer is who made a verified signature, for one authority.
type Signer struct {
	// Authority is the policy's authority that verified it: "key <fingerprint>" or
	// "keyless <issuer> <subject>" (as the policy spells them).
	// +kubebuilder:validation:MaxLength=1024
	Authority string `json:"authority"`

	// Identity is the signer: the key's fingerprint (SHA256:<base64>), or the certificate's
	// subject and issuer.
	// +kubebuilder:validation:MaxLength=1024
	Identity string `json:"identity"`

	// Source is where the signature was found: Tag or Referrer.
	// +kubebuilder:validation:Enum=Tag;Referrer
	Source string `json:"source"`
}

// ImageScanReportStatus holds what the scanner found in the image.
type ImageScanReportStatus struct {
	// Conditions: Ready (findings current), Scanned (last scan succeeded, else its reason).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// ObservedGeneration is the spec generation the status was computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Workloads in this namespace whose pods run the image.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	Workloads []Workload `json:"workloads,omitempty"`

	// Platform of the image scanned (os/architecture[/variant], from its config): for an index
	// digest, the image spec.platform picked.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Platform string `json:"platform,omitempty"`

	// ImageDigest is the digest of the image manifest scanned: spec.digest itself, or, when
	// spec.digest names an image index, the index's image for spec.platform.
	// +optional
	// +kubebuilder:validation:Pattern=`^sha256:[a-f0-9]{64}$`
	ImageDigest string `json:"imageDigest,omitempty"`

	// IndexPlatforms are the platforms (os/architecture[/variant]) the image index spec.digest
	// has images for; empty when spec.digest is an image manifest (or the index names none).
	// Admission judges a pod that may run on any node on a report for every platform of these
	// that the cluster's nodes have.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=128
	IndexPlatforms []string `json:"indexPlatforms,omitempty"`
	// JavaArchivesNotAnalysed counts the image's jar, war, ear and par files that the scan whose
	// findings are in force did not analyse, for want of a Java DB (reason JavaDBUnavailable):
	// their packages are missing from the findings, so policies take the image for not fully
	// scanned. Cleared by a scan that analysed them; kept through a failed one.
	// +optional
	// +kubebuilder:validation:Minimum=0
	JavaArchivesNotAnalysed int32 `json:"javaArchivesNotAnalysed,omitempty"`

	// OS detected in the image.
	// +optional
	OS *OperatingSystem `json:"os,omitempty"`

	// Scanner that produced the findings.
	// +optional
	Scanner *Scanner `json:"scanner,omitempty"`

	// VulnerabilityDB the findings were matched against. When a re-match finds what the report
	// already says it is not written: VulnerabilityDB and LastScanTime are then brought up to date
	// at most once per --report-refresh-interval, so they may be that much behind (the
	// VulnerabilityDatabase object and policies' maxScanAge know the DB each report was last
	// matched against; see docs/status.md).
	// +optional
	VulnerabilityDB *VulnerabilityDB `json:"vulnerabilityDB,omitempty"`

	// LastScanTime is when the findings were last matched against the DB (at most
	// --report-refresh-interval behind, as VulnerabilityDB).
	// +optional
	LastScanTime *metav1.Time `json:"lastScanTime,omitempty"`

	// LastAnalysisTime is when the image's packages were inventoried (pulled and analysed).
	// +optional
	LastAnalysisTime *metav1.Time `json:"lastAnalysisTime,omitempty"`

	// Summary counts every finding by severity.
	// +optional
	Summary *VulnerabilitySummary `json:"summary,omitempty"`

	// Vulnerabilities found, sorted by severity then id, cut so that the whole object stays under
	// the controller's --report-max-bytes.
	// +optional
	// +listType=atomic
	Vulnerabilities []Vulnerability `json:"vulnerabilities,omitempty"`

	// VulnerabilitiesOmitted counts the findings cut from the list above.
	// +optional
	VulnerabilitiesOmitted int32 `json:"vulnerabilitiesOmitted,omitempty"`

	// Changes is what the last change of the findings brought.
	// +optional
	Changes *FindingChanges `json:"changes,omitempty"`

	// Signatures holds the verdicts of the signature authorities of the policies that apply to
	// the image here, one per authority set, ordered by it.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Signatures []SignatureCheck `json:"signatures,omitempty"`

	// Sources are the RegistryScans of this namespace that list the digest, with the tags they
	// found pointing at it. A report is kept while a scan lists it or a pod runs it, and removed
	// --report-retention after neither does.
	// +optional
	// +listType=map
	// +listMapKey=registryScan
	// +kubebuilder:validation:MaxItems=16
	Sources []ReportSource `json:"sources,omitempty"`
}

// ReportSource is a RegistryScan that lists a report's digest.
type ReportSource struct {
	// RegistryScan is the name of the scan, in the report's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	RegistryScan string `json:"registryScan"`

	// Repository the scan found the digest in; its tags are those of this repository.
	// +required
	// +kubebuilder:validation:MaxLength=512
	Repository string `json:"repository"`

	// Tags the scan found pointing at the digest (the first 16, sorted).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=128
	Tags []string `json:"tags,omitempty"`
}

// ImageScanReport holds the vulnerabilities of one image digest used in one namespace.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=isr,categories=imageguard
// +kubebuilder:printcolumn:name="Repository",type=string,JSONPath=`.spec.image`
// +kubebuilder:printcolumn:name="Tag",type=string,JSONPath=`.spec.tags[0]`
// +kubebuilder:printcolumn:name="Digest",type=string,JSONPath=`.spec.digest`,priority=1
// +kubebuilder:printcolumn:name="Platform",type=string,JSONPath=`.status.platform`,priority=1
// +kubebuilder:printcolumn:name="Critical",type=integer,JSONPath=`.status.summary.critical`
// +kubebuilder:printcolumn:name="High",type=integer,JSONPath=`.status.summary.high`
// +kubebuilder:printcolumn:name="Medium",type=integer,JSONPath=`.status.summary.medium`
// +kubebuilder:printcolumn:name="Low",type=integer,JSONPath=`.status.summary.low`
// +kubebuilder:printcolumn:name="Unknown",type=integer,JSONPath=`.status.summary.unknown`,priority=1
// +kubebuilder:printcolumn:name="Fixable",type=integer,JSONPath=`.status.summary.fixable`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ImageScanReport struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec ImageScanReportSpec `json:"spec"`

	// +optional
	Status ImageScanReportStatus `json:"status,omitempty"`
}

// ImageScanReportList is a list of ImageScanReports.
//
// +kubebuilder:object:root=true
type ImageScanReportList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ImageScanReport `json:"items"`
}

// GetConditions returns the report's conditions.
func (r *ImageScanReport) GetConditions() []metav1.Condition { return r.Status.Conditions }

// SetConditions sets the report's conditions.
func (r *ImageScanReport) SetConditions(c []metav1.Condition) { r.Status.Conditions = c }

// SetObservedGeneration records the spec generation the status was computed for.
func (r *ImageScanReport) SetObservedGeneration(g int64) { r.Status.ObservedGeneration = g }

func init() {
	register(&ImageScanReport{}, &ImageScanReportList{})
}
