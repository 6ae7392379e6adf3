// Package v1alpha2 holds the PolicyReport and ClusterPolicyReport kinds of the Kubernetes Policy
// working group (wgpolicyk8s.io/v1alpha2), which Policy Reporter and other dashboards read.
// ImageGuard writes them; the CRDs generated from these types are installed only when asked for
// (the chart's option), and ImageGuard writes reports only where the CRD exists.
//
// +kubebuilder:object:generate=true
// +groupName=wgpolicyk8s.io
package v1alpha2

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is wgpolicyk8s.io/v1alpha2.
	GroupVersion = schema.GroupVersion{Group: "wgpolicyk8s.io", Version: "v1alpha2"}
	// SchemeBuilder registers the kinds of this package.
	SchemeBuilder = runtime.NewSchemeBuilder(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, &PolicyReport{}, &PolicyReportList{}, &ClusterPolicyReport{}, &ClusterPolicyReportList{})
		metav1.AddToGroupVersion(s, GroupVersion)
		return nil
	})
	// AddToScheme adds the kinds of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// Result is the outcome of a rule for a resource.
// +kubebuilder:validation:Enum=pass;fail;warn;error;skip
type Result string

// The results.
const (
	ResultPass  Result = "pass"
	ResultFail  Result = "fail"
	ResultWarn  Result = "warn"
	ResultError Result = "error"
	ResultSkip  Result = "skip"
)

// Severity of a result.
// +kubebuilder:validation:Enum=critical;high;low;medium;info
type Severity string

// PolicyReportSummary counts the results by outcome.
type PolicyReportSummary struct {
	Pass  int `json:"pass"`
	Fail  int `json:"fail"`
	Warn  int `json:"warn"`
	Error int `json:"error"`
	Skip  int `json:"skip"`
}

// PolicyReportResult is the outcome of one rule of one policy for some resources.
type PolicyReportResult struct {
	// Source is the engine that produced the result: imageguard.
	Source string `json:"source,omitempty"`
	// Policy is the policy's name.
	Policy string `json:"policy"`
	// Rule is the rule's name.
	Rule string `json:"rule,omitempty"`
	// Category groups results.
	Category string `json:"category,omitempty"`
	// Severity of the result.
	Severity Severity `json:"severity,omitempty"`
	// Timestamp is when the result was computed.
	Timestamp metav1.Timestamp `json:"timestamp,omitempty"`
	// Result is the outcome.
	Result Result `json:"result,omitempty"`
	// Scored tells whether the result counts in a score.
	Scored bool `json:"scored,omitempty"`
	// Subjects are the resources the result is about.
	Subjects []corev1.ObjectReference `json:"resources,omitempty"`
	// Description says why.
	Description string `json:"message,omitempty"`
	// Properties are extra key/value data.
	Properties map[string]string `json:"properties,omitempty"`
}

// PolicyReport holds the results of policies for the resources of its namespace.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=polr
// +kubebuilder:printcolumn:name="Pass",type=integer,JSONPath=`.summary.pass`
// +kubebuilder:printcolumn:name="Fail",type=integer,JSONPath=`.summary.fail`
// +kubebuilder:printcolumn:name="Warn",type=integer,JSONPath=`.summary.warn`
// +kubebuilder:printcolumn:name="Error",type=integer,JSONPath=`.summary.error`
// +kubebuilder:printcolumn:name="Skip",type=integer,JSONPath=`.summary.skip`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PolicyReport struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Scope is the resource the report is about, when it is about one.
	Scope *corev1.ObjectReference `json:"scope,omitempty"`
	// ScopeSelector selects the resources the report is about.
	ScopeSelector *metav1.LabelSelector `json:"scopeSelector,omitempty"`
	// Summary counts the results.
	Summary PolicyReportSummary `json:"summary,omitempty"`
	// Results are the outcomes.
	Results []PolicyReportResult `json:"results,omitempty"`
}

// PolicyReportList is a list of PolicyReports.
//
// +kubebuilder:object:root=true
type PolicyReportList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PolicyReport `json:"items"`
}

// ClusterPolicyReport holds the results of policies for cluster-scoped resources.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=cpolr
// +kubebuilder:printcolumn:name="Pass",type=integer,JSONPath=`.summary.pass`
// +kubebuilder:printcolumn:name="Fail",type=integer,JSONPath=`.summary.fail`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterPolicyReport struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Scope         *corev1.ObjectReference `json:"scope,omitempty"`
	ScopeSelector *metav1.LabelSelector   `json:"scopeSelector,omitempty"`
	Summary       PolicyReportSummary     `json:"summary,omitempty"`
	Results       []PolicyReportResult    `json:"results,omitempty"`
}

// ClusterPolicyReportList is a list of ClusterPolicyReports.
//
// +kubebuilder:object:root=true
type ClusterPolicyReportList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterPolicyReport `json:"items"`
}
