package controllers

import (
	"context"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/registry"
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
	Now               func() time.Time
}

// registryResolver resolves tags anonymously: admission has no pod to take pull secrets from
// yet, and a tag of a private registry falls back to the reports' tags.
type registryResolver struct{ client *registry.Client }

func (r registryResolver) ResolveDigest(ctx context.Context, ref string) (string, error) {
	return r.client.ResolveDigest(ctx, ref, nil)
}

// SetupAdmission serves the validating webhook (admission.ValidatePath) and the ImagePolicyWebhook
// backend (admission.ImagePolicyPath) on the manager's webhook server, deciding from the
// manager's cache.
func SetupAdmission(mgr ctrl.Manager, opts AdmissionOptions) error {
	if err := admission.IndexReports(context.Background(), mgr.GetFieldIndexer()); err != nil {
		return err
	}
	if opts.ScanQueueCapacity == 0 {
		opts.ScanQueueCapacity = 1024
	}
	queue := NewAdmissionScans(mgr.GetClient(), mgr.GetLogger().WithName("admission-scans"), opts.ExcludedNamespaces, opts.ScanQueueCapacity)
	if err := mgr.Add(queue); err != nil {
		return err
	}
	state := &admission.CacheState{
		Reader: mgr.GetCache(), ResolveTimeout: opts.ResolveTimeout, Now: opts.Now,
		// A registry that cannot answer is asked again after 30s, not on every request.
		Digests: &registry.DigestCache{TTL: 5 * time.Minute, FailureTTL: 30 * time.Second},
	}
	if opts.Registry != nil {
		state.Resolver = registryResolver{opts.Registry}
	}
	reviewer := &admission.Reviewer{State: state, Queue: queue, ExemptNamespaces: opts.ExemptNamespaces, Now: opts.Now}
	server := mgr.GetWebhookServer()
	server.Register(admission.ValidatePath, &webhook.Admission{Handler: admission.NewWorkloadValidator(reviewer, mgr.GetScheme())})
	server.Register(admission.ImagePolicyPath, &admission.ImageReviewHandler{Reviewer: reviewer})
	return nil
}
