package controllers

import (
	"context"
	"time"

	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/workload"
)

// AdmissionOptions configure the admission endpoints.
type AdmissionOptions struct {
	// Registry resolves tags to digests on the request path (anonymously, bounded by
	// ResolveTimeout, cached); nil never resolves.
	Registry       *registry.Client
	ResolveTimeout time.Duration
	// ExemptNamespaces are never checked (kube-system always is).
	ExemptNamespaces []string
	// ExcludedNamespaces get no report from admission, as from the pod controller.
	ExcludedNamespaces []string
	// ScanQueueCapacity bounds the images waiting for their report to be created.
	ScanQueueCapacity int
}

// registryResolver resolves tags anonymously: admission has no pod to take pull secrets from
// yet, and a tag of a private registry falls back to the reports' tags.
type registryResolver struct{ client *registry.Client }

func (r registryResolver) ResolveDigest(ctx context.Context, ref string) (string, error) {
	return r.client.ResolveDigest(ctx, ref, nil)
}

// setupAdmission serves the validating webhook (admission.ValidatePath) and the ImagePolicyWebhook
// backend (admission.ImagePolicyPath) on the manager's webhook server, deciding from the
// gatherer over the manager's cache.
func setupAdmission(mgr ctrl.Manager, gatherer *workload.Gatherer, clk clock.PassiveClock, opts AdmissionOptions) error {
	if opts.ScanQueueCapacity == 0 {
		opts.ScanQueueCapacity = 1024
	}
	queue := NewAdmissionScans(mgr.GetClient(), mgr.GetLogger().WithName("admission-scans"), opts.ExcludedNamespaces, opts.ScanQueueCapacity)
	if err := mgr.Add(queue); err != nil {
		return err
	}
	state := &admission.CacheState{
		Gatherer: gatherer, Reader: mgr.GetCache(), ResolveTimeout: opts.ResolveTimeout, Clock: clk,
		// A registry that cannot answer is asked again after 30s, not on every request.
		Digests: &registry.DigestCache{TTL: 5 * time.Minute, FailureTTL: 30 * time.Second},
	}
	if opts.Registry != nil {
		state.Resolver = registryResolver{opts.Registry}
	}
	reviewer := &admission.Reviewer{State: state, Queue: queue, ExemptNamespaces: opts.ExemptNamespaces, Clock: clk}
	server := mgr.GetWebhookServer()
	server.Register(admission.ValidatePath, &webhook.Admission{Handler: admission.NewWorkloadValidator(reviewer, mgr.GetScheme())})
	server.Register(admission.ImagePolicyPath, &admission.ImageReviewHandler{Reviewer: reviewer})
	return nil
}
