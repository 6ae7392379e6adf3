package controllers

import (
	"time"

	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/signature"
	"github.com/imageguard/imageguard/internal/workload"
)

// AdmissionOptions configure the admission endpoints.
type AdmissionOptions struct {
	// Registry resolves tags to digests on the request path, with the pod spec's pull secrets,
	// within Budget, cached; nil never resolves.
	Registry *registry.Client
	// Budget bounds one decision (default 3s): it must be well under the webhook's timeout.
	Budget time.Duration
	// FailurePolicy is what an internal error answers (default Ignore); the webhook
	// configuration's should be the same.
	FailurePolicy admission.FailurePolicy
	// ControllerUsers make objects for a controlling owner that was judged at its template
	// (default admission.DefaultControllerUsers).
	ControllerUsers []string
	// ExemptNamespaces are never checked (kube-system always is).
	ExemptNamespaces []string
	// ExcludedNamespaces get no report from admission, as from the pod controller.
	ExcludedNamespaces []string
	// ScanQueueCapacity bounds the images waiting for their report to be created.
	ScanQueueCapacity int
	// NodePlatforms are those of nodes that may join (workload.NodePlatform's form).
	NodePlatforms []string
}

// Admission reads, uncached and by name, the revision a StatefulSet pod names, when its images are
// not the template's (a partitioned rolling update).
// +kubebuilder:rbac:groups=apps,resources=controllerrevisions,verbs=get

// setupAdmission serves the validating webhook (admission.ValidatePath) and the ImagePolicyWebhook
// backend (admission.ImagePolicyPath) on the manager's webhook server, deciding from the
// gatherer over the manager's cache.
func setupAdmission(mgr ctrl.Manager, gatherer *workload.Gatherer, verifier *signature.Verifier, clk clock.PassiveClock, opts AdmissionOptions) error {
	if opts.ScanQueueCapacity == 0 {
		opts.ScanQueueCapacity = 1024
	}
	if opts.Budget == 0 {
		opts.Budget = 3 * time.Second
	}
	if opts.FailurePolicy == "" {
		opts.FailurePolicy = admission.FailureIgnore
	}
	if opts.ControllerUsers == nil {
		opts.ControllerUsers = admission.DefaultControllerUsers
	}
	queue := NewAdmissionScans(mgr.GetClient(), mgr.GetAPIReader(), mgr.GetLogger().WithName("admission-scans"), opts.ExcludedNamespaces, opts.ScanQueueCapacity)
	if err := mgr.Add(queue); err != nil {
		return err
	}
	state := &admission.CacheState{
		Gatherer: gatherer, Reader: mgr.GetCache(), Secrets: mgr.GetAPIReader(), Clock: clk, Verifier: verifier,
		ExtraNodePlatforms: opts.NodePlatforms,
		// A registry that cannot answer in time is asked again after 30s, not on every request.
		Digests: &registry.DigestCache{TTL: 5 * time.Minute, FailureTTL: 30 * time.Second},
	}
	if opts.Registry != nil {
		state.Resolver = opts.Registry
	}
	reviewer := &admission.Reviewer{
		State: state, Owners: mgr.GetCache(), LiveOwners: mgr.GetAPIReader(), Queue: queue, ExemptNamespaces: opts.ExemptNamespaces,
		Budget: opts.Budget, FailurePolicy: opts.FailurePolicy, ControllerUsers: opts.ControllerUsers, Clock: clk,
	}
	server := mgr.GetWebhookServer()
	// Past the decision budget and the 2 s the API server leaves on top, nobody waits for the
	// answer: a request still being read then is cut.
	readDeadline := max(opts.Budget+2*time.Second, 5*time.Second)
	server.Register(admission.ValidatePath, admission.ReadDeadline(&admission.OversizeGuard{
		Next:     &webhook.Admission{Handler: admission.NewWorkloadValidator(reviewer, mgr.GetScheme())},
		Reviewer: reviewer,
	}, readDeadline))
	server.Register(admission.ImagePolicyPath, admission.ReadDeadline(&admission.ImageReviewHandler{Reviewer: reviewer}, readDeadline))
	return nil
}
