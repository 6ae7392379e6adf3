package admission

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/imageguard/imageguard/internal/workload"
)

// ValidatePath is where the manager's webhook server serves WorkloadValidator.
const ValidatePath = "/validate-workloads"

// The webhook configuration generated from these markers (config/webhook/manifests.yaml) is the
// reference the Helm chart's template is checked against.
// +kubebuilder:webhook:path=/validate-workloads,mutating=false,failurePolicy=fail,sideEffects=NoneOnDryRun,groups="",resources=pods;pods/ephemeralcontainers,verbs=create;update,versions=v1,name=pods.imageguard.dev,admissionReviewVersions=v1,timeoutSeconds=5,matchPolicy=Equivalent
// +kubebuilder:webhook:path=/validate-workloads,mutating=false,failurePolicy=fail,sideEffects=NoneOnDryRun,groups=apps,resources=deployments;statefulsets;daemonsets;replicasets,verbs=create;update,versions=v1,name=apps.imageguard.dev,admissionReviewVersions=v1,timeoutSeconds=5,matchPolicy=Equivalent
// +kubebuilder:webhook:path=/validate-workloads,mutating=false,failurePolicy=fail,sideEffects=NoneOnDryRun,groups=batch,resources=jobs;cronjobs,verbs=create;update,versions=v1,name=batch.imageguard.dev,admissionReviewVersions=v1,timeoutSeconds=5,matchPolicy=Equivalent

// WorkloadValidator is the validating webhook of Pods (and their ephemeral containers) and of the
// pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs. An
// update that leaves the images as they were is admitted without a decision, so a new CVE never
// blocks scaling or relabelling a running workload: the policy status reports it instead.
type WorkloadValidator struct {
	Reviewer *Reviewer
	Decoder  admission.Decoder
}

// NewWorkloadValidator returns the validator, decoding objects with scheme.
func NewWorkloadValidator(reviewer *Reviewer, scheme *runtime.Scheme) *WorkloadValidator {
	return &WorkloadValidator{Reviewer: reviewer, Decoder: admission.NewDecoder(scheme)}
}

// Handle answers one AdmissionReview.
func (v *WorkloadValidator) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.UID == "" || req.Kind.Kind == "" {
		return admission.Errored(http.StatusBadRequest, errors.New("not an admission.k8s.io/v1 AdmissionReview request"))
	}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("")
	}
	obj, spec, err := v.decode(req.Kind, req.Object)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if obj == nil {
		return admission.Allowed("not a workload ImageGuard checks")
	}
	containers := workload.Containers(spec)
	if req.Operation == admissionv1.Update && len(req.OldObject.Raw) > 0 {
		if _, old, err := v.decode(req.Kind, req.OldObject); err == nil && old != nil && slices.Equal(workload.Containers(old), containers) {
			return admission.Allowed("images unchanged")
		}
	}
	d, err := v.Reviewer.Review(ctx, Request{
		Endpoint: EndpointValidate, Namespace: req.Namespace, Labels: obj.GetLabels(), Containers: containers,
		PodSpec: spec, User: req.UserInfo.Username, Object: obj,
		ObjectKind: schema.GroupKind{Group: req.Kind.Group, Kind: req.Kind.Kind}, DryRun: req.DryRun != nil && *req.DryRun,
	})
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	resp := admission.Allowed("")
	if !d.Allowed {
		resp = admission.Denied(d.Message)
	}
	resp = resp.WithWarnings(d.Warnings...)
	if len(d.Audit) > 0 {
		resp.AuditAnnotations = auditAnnotations(d.Audit)
	}
	return resp
}

// decode decodes obj of kind and returns it and its pod (template) spec; nil for a kind it does
// not check.
func (v *WorkloadValidator) decode(kind metav1.GroupVersionKind, obj runtime.RawExtension) (client.Object, *corev1.PodSpec, error) {
	k, ok := workload.KindOf(kind.Group, kind.Kind)
	if !ok {
		return nil, nil, nil
	}
	target := k.New()
	if err := v.Decoder.DecodeRaw(obj, target); err != nil {
		return nil, nil, fmt.Errorf("decoding the %s: %w", kind.Kind, err)
	}
	return target, k.PodSpec(target), nil
}
