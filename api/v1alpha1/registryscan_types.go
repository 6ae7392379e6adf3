package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RegistryScanSpec says which images of a registry are scanned before anything runs them.
type RegistryScanSpec struct {
	// Repositories are scanned: a repository (registry.example.com/team/app), or a prefix ending
	// in /** (registry.example.com/team/**, registry.example.com/**) whose repositories are read
	// from the registry's catalog.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=512
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([a-z0-9._:-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*(/\*\*)?$`
	Repositories []string `json:"repositories"`

	// Tags says which tags of each repository count; none: every tag. A digest is scanned once
	// whatever the number of its tags.
	// +optional
	Tags *TagFilter `json:"tags,omitempty"`

	// Interval is how often the repositories are listed again (default 6h, at least 1m).
	// +optional
	// +kubebuilder:default="6h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="interval must be at least 1m"
	Interval *metav1.Duration `json:"interval,omitempty"`

	// Suspend stops the listing; the reports of what the last listing found are kept.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// SecretRef names a docker config Secret (kubernetes.io/dockerconfigjson) in this namespace
	// with the credentials to list and pull the repositories. It is read by name, uncached, at
	// each listing and scan.
	// +optional
	SecretRef *LocalSecretReference `json:"secretRef,omitempty"`

	// ServiceAccountName names a service account of this namespace whose imagePullSecrets are
	// used too (none: the namespace's default service account, as for a pod).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	ServiceAccountName string `json:"serviceAccountName,omitempty"`

	// Receiver authenticates the registry's push notifications at
	// /hooks/registry/<namespace>/<name> on the controller's receiver port; without it the
	// receiver refuses every notification for this scan.
	// +optional
	Receiver *ReceiverSpec `json:"receiver,omitempty"`
}

// TagFilter says which tags of a repository count.
type TagFilter struct {
	// Semver is a semantic-version range ("^1.2", ">= 1.0, < 2"); a tag that is no version fails
	// it. A pre-release passes only a range that names one.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Semver string `json:"semver,omitempty"`

	// Pattern is a regular expression (RE2) the whole tag must match.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Pattern string `json:"pattern,omitempty"`

	// Latest keeps the newest N of the tags the other fields select: by semantic version when
	// every one is a version, else by the image's creation time.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	Latest int32 `json:"latest,omitempty"`

	// Exclude are regular expressions (RE2); a tag any of them matches whole is left out.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=1024
	Exclude []string `json:"exclude,omitempty"`
}

// LocalSecretReference names a Secret in the object's namespace.
type LocalSecretReference struct {
	// Name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// ReceiverSpec authenticates push notifications.
type ReceiverSpec struct {
	// SecretRef names a Secret in this namespace whose key "token" the notification must present
	// as "Authorization: Bearer <token>" (the Distribution registry's endpoint headers) or as the
	// whole Authorization header (Harbor's auth header).
	// +required
	SecretRef LocalSecretReference `json:"secretRef"`
}

// RegistryScanImage is an image a scan lists, among those with the most severe findings.
type RegistryScanImage struct {
	// Image is the repository.
	Image string `json:"image"`
	// Digest of the image.
	Digest string `json:"digest"`
	// Tags that point at it (the first 8).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	Tags []string `json:"tags,omitempty"`
	// Report is the name of its ImageScanReport in this namespace.
	Report string `json:"report"`
	// Critical findings.
	Critical int32 `json:"critical"`
	// High findings.
	High int32 `json:"high"`
}

// RegistryScanFailure is something a scan could not list or scan.
type RegistryScanFailure struct {
	// Repository it concerns.
	Repository string `json:"repository"`
	// Tag it concerns, if one.
	// +optional
	Tag string `json:"tag,omitempty"`
	// Digest it concerns, if one (a failed scan).
	// +optional
	Digest string `json:"digest,omitempty"`
	// Reason names the cause: Unauthorized, NotFound, Timeout, RateLimited, UnsupportedImage,
	// ScanFailed...
	Reason string `json:"reason"`
	// Message says what happened.
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message"`
}

// RegistryScanStatus is what the last listing found and how far its images are scanned.
type RegistryScanStatus struct {
	// Conditions: Ready (listing current, every image scanned or failed), Reconciling (scans or a
	// retry under way), Stalled (the spec cannot work as written).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// ObservedGeneration is the spec generation the status was computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// LastListTime is when the repositories were last listed, successfully or not.
	// +optional
	LastListTime *metav1.Time `json:"lastListTime,omitempty"`

	// LastHandledRequest is the value of the security.imageguard.dev/requested-at annotation
	// (set by the receiver, or by hand) that the last listing answered.
	// +optional
	LastHandledRequest string `json:"lastHandledRequest,omitempty"`

	// Repositories listed.
	// +optional
	Repositories int32 `json:"repositories,omitempty"`
	// Tags selected by the filter.
	// +optional
	Tags int32 `json:"tags,omitempty"`
	// Digests those tags point at: each is scanned once.
	// +optional
	Digests int32 `json:"digests,omitempty"`
	// Scanned digests whose report holds findings matched against the DB.
	// +optional
	Scanned int32 `json:"scanned,omitempty"`
	// Failed counts the repositories not listed, tags not resolved and digests not scanned.
	// +optional
	Failed int32 `json:"failed,omitempty"`

	// Summary adds up the findings of the scanned digests by severity.
	// +optional
	Summary *VulnerabilitySummary `json:"summary,omitempty"`

	// Worst are the images with the most critical, then high, findings (the first 10).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=10
	Worst []RegistryScanImage `json:"worst,omitempty"`

	// Failures are the first 20 of what failed, with reasons.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=20
	Failures []RegistryScanFailure `json:"failures,omitempty"`
}

// RegistryScan scans the images of registry repositories before anything runs them, at an
// interval and when the registry notifies a push. Their reports are ImageScanReports in the
// scan's namespace.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=rscan,categories=imageguard
// +kubebuilder:printcolumn:name="Repositories",type=integer,JSONPath=`.status.repositories`
// +kubebuilder:printcolumn:name="Tags",type=integer,JSONPath=`.status.tags`
// +kubebuilder:printcolumn:name="Digests",type=integer,JSONPath=`.status.digests`
// +kubebuilder:printcolumn:name="Critical",type=integer,JSONPath=`.status.summary.critical`
// +kubebuilder:printcolumn:name="High",type=integer,JSONPath=`.status.summary.high`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Listed",type=date,JSONPath=`.status.lastListTime`,priority=1
type RegistryScan struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec RegistryScanSpec `json:"spec"`

	// +optional
	Status RegistryScanStatus `json:"status,omitempty"`
}

// RegistryScanList is a list of RegistryScans.
//
// +kubebuilder:object:root=true
type RegistryScanList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RegistryScan `json:"items"`
}

// GetConditions returns the scan's conditions.
func (s *RegistryScan) GetConditions() []metav1.Condition { return s.Status.Conditions }

// SetConditions sets the scan's conditions.
func (s *RegistryScan) SetConditions(c []metav1.Condition) { s.Status.Conditions = c }

// SetObservedGeneration records the spec generation the status was computed for.
func (s *RegistryScan) SetObservedGeneration(g int64) { s.Status.ObservedGeneration = g }

// RequestedAtAnnotation on a RegistryScan asks for a listing now: the receiver sets it when a
// registry notifies a push, and anyone may (kubectl annotate --overwrite ...=$(date +%s)).
const RequestedAtAnnotation = "security.imageguard.dev/requested-at"

func init() {
	register(&RegistryScan{}, &RegistryScanList{})
}
