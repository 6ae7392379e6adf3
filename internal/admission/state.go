package admission

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/workload"
)

// Resolver turns a tag into the digest it points at now.
type Resolver interface {
	ResolveDigest(ctx context.Context, ref string) (string, error)
}

// CacheState is the State of a running manager: policies and reports come from the Gatherer, over
// the informer cache (never the API server), and tags are resolved to digests through a cache with
// a short timeout. A report is found by digest in the request's namespace, then in any namespace
// (a digest's findings are the same everywhere), then, when the registry cannot say, by the tag
// the pod controller last saw.
type CacheState struct {
	Gatherer *workload.Gatherer
	// Reader reads namespaces (the opt-out label), from the cache.
	Reader client.Reader
	// Resolver looks tags up; nil never resolves (tags are then found by the reports' tags only).
	Resolver Resolver
	// ResolveTimeout bounds one tag lookup on the request path (default 2s).
	ResolveTimeout time.Duration
	// Digests keeps tag lookups; nil looks every tag up again.
	Digests *registry.DigestCache
	Clock   clock.PassiveClock
}

var _ State = (*CacheState)(nil)

// Policies returns the valid policies that apply in namespace to a workload with these labels.
func (s *CacheState) Policies(ctx context.Context, namespace string, workloadLabels map[string]string) ([]*workload.Policy, error) {
	all, err := s.Gatherer.PoliciesFor(ctx, namespace)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, p := range all {
		if p.SelectsLabels(workloadLabels) {
			out = append(out, p)
		}
	}
	return out, nil
}

// OptedOut reports whether namespace carries OptOutLabel=disabled.
func (s *CacheState) OptedOut(ctx context.Context, namespace string) bool {
	ns := &corev1.Namespace{}
	if err := s.Reader.Get(ctx, types.NamespacedName{Name: namespace}, ns); err != nil {
		return false
	}
	return ns.Labels[OptOutLabel] == "disabled"
}

// Report returns the image's digest (empty when unknown) and its report.
func (s *CacheState) Report(ctx context.Context, namespace string, img policy.Image) (string, *policy.Report) {
	if img.Digest == "" {
		img.Digest = s.resolve(ctx, img.Reference())
	}
	return img.Digest, s.Gatherer.Report(ctx, namespace, img)
}

// resolve returns the digest ref's tag points at, from the cache or the registry; "" when it
// cannot be told in time.
func (s *CacheState) resolve(ctx context.Context, ref string) string {
	if s.Resolver == nil {
		return ""
	}
	timeout := s.ResolveTimeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	lookup := func() (string, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return s.Resolver.ResolveDigest(ctx, ref)
	}
	var digest string
	var err error
	if s.Digests == nil {
		digest, err = lookup()
	} else {
		digest, err = s.Digests.Resolve(ref, s.Clock.Now(), lookup)
	}
	if err != nil {
		return ""
	}
	return digest
}
