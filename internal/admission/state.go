package admission

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
)

// Field indexes of ImageScanReports that admission looks reports up by.
const (
	// IndexReportDigest holds a report's spec.digest.
	IndexReportDigest = "imageguard.spec.digest"
	// IndexReportTag holds "<spec.image>:<tag>" for each of a report's spec.tags.
	IndexReportTag = "imageguard.spec.imageTag"
)

// IndexReports registers the field indexes CacheState reads, on the manager's cache.
func IndexReports(ctx context.Context, indexer client.FieldIndexer) error {
	report := &securityv1alpha1.ImageScanReport{}
	if err := indexer.IndexField(ctx, report, IndexReportDigest, func(obj client.Object) []string {
		return []string{obj.(*securityv1alpha1.ImageScanReport).Spec.Digest}
	}); err != nil {
		return err
	}
	return indexer.IndexField(ctx, report, IndexReportTag, func(obj client.Object) []string {
		r := obj.(*securityv1alpha1.ImageScanReport)
		out := make([]string, 0, len(r.Spec.Tags))
		for _, tag := range r.Spec.Tags {
			out = append(out, r.Spec.Image+":"+tag)
		}
		return out
	})
}

// Resolver turns a tag into the digest it points at now.
type Resolver interface {
	ResolveDigest(ctx context.Context, ref string) (string, error)
}

// CacheState is the State of a running manager: policies, namespaces and reports come from the
// informer cache (never the API server), compiled policies are kept per generation, and tags are
// resolved to digests through a cache with a short timeout. Reports are found by digest in the
// request's namespace, then in any namespace (a digest's findings are the same everywhere), then,
// when the registry cannot say, by the tag the pod controller last saw.
type CacheState struct {
	Reader client.Reader
	// Resolver looks tags up; nil never resolves (tags are then found by the reports' tags only).
	Resolver Resolver
	// ResolveTimeout bounds one tag lookup on the request path (default 2s).
	ResolveTimeout time.Duration
	// Digests keeps tag lookups; nil looks every tag up again.
	Digests *registry.DigestCache
	// Verifier checks signatures for policies that require them; nil makes them unevaluable.
	Verifier policy.SignatureVerifier
	Now      func() time.Time

	compiled sync.Map // types.UID -> compiledPolicy
}

type compiledPolicy struct {
	generation int64
	policy     Policy
	selector   labels.Selector
	namespaces labels.Selector // nil for namespaced policies
	err        error
}

var _ State = (*CacheState)(nil)

// Policies returns the ImagePolicies of namespace and the ClusterImagePolicies whose selectors
// pick it and the workload's labels. A policy that does not compile is skipped: its status says
// why, and admission must not fail closed on a typo.
func (s *CacheState) Policies(ctx context.Context, namespace string, workloadLabels map[string]string) ([]Policy, error) {
	set := labels.Set(workloadLabels)
	var out []Policy
	namespaced := &securityv1alpha1.ImagePolicyList{}
	if err := s.Reader.List(ctx, namespaced, client.InNamespace(namespace), client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing ImagePolicies: %w", err)
	}
	for i := range namespaced.Items {
		p := &namespaced.Items[i]
		c := s.compile(p.UID, p.Generation, "ImagePolicy/"+p.Namespace+"/"+p.Name, p.Spec.Enforcement, p.Spec.Match, nil, p.Spec.Rules)
		if c.err == nil && c.selector.Matches(set) {
			out = append(out, c.policy)
		}
	}
	cluster := &securityv1alpha1.ClusterImagePolicyList{}
	if err := s.Reader.List(ctx, cluster, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing ClusterImagePolicies: %w", err)
	}
	var nsLabels labels.Set
	for i := range cluster.Items {
		p := &cluster.Items[i]
		c := s.compile(p.UID, p.Generation, "ClusterImagePolicy/"+p.Name, p.Spec.Enforcement, p.Spec.Match.ImageMatch, p.Spec.Match.NamespaceSelector, p.Spec.Rules)
		if c.err != nil || !c.selector.Matches(set) {
			continue
		}
		if c.namespaces != nil && !c.namespaces.Empty() {
			if nsLabels == nil {
				ns := &corev1.Namespace{}
				if err := s.Reader.Get(ctx, types.NamespacedName{Name: namespace}, ns); err != nil {
					return nil, fmt.Errorf("reading namespace %s: %w", namespace, err)
				}
				nsLabels = labels.Set(ns.Labels)
			}
			if !c.namespaces.Matches(nsLabels) {
				continue
			}
		}
		out = append(out, c.policy)
	}
	return out, nil
}

// compile returns the compiled form of a policy, compiling it again only when its generation
// changed.
func (s *CacheState) compile(uid types.UID, generation int64, name string, enforcement securityv1alpha1.Enforcement,
	match securityv1alpha1.ImageMatch, namespaceSelector *metav1.LabelSelector, rules securityv1alpha1.PolicyRules) *compiledPolicy {
	if v, ok := s.compiled.Load(uid); ok && v.(*compiledPolicy).generation == generation {
		return v.(*compiledPolicy)
	}
	c := &compiledPolicy{generation: generation, selector: labels.Everything()}
	c.policy = Policy{Name: name, Enforcement: enforcement, OnUnscanned: rules.OnUnscanned}
	c.policy.Rules, c.err = policy.Compile(rules, s.Verifier)
	if c.err == nil {
		c.policy.Images, c.err = policy.CompileGlobs(match.Images)
	}
	if c.err == nil && match.Selector != nil {
		c.selector, c.err = metav1.LabelSelectorAsSelector(match.Selector)
	}
	if c.err == nil && namespaceSelector != nil {
		c.namespaces, c.err = metav1.LabelSelectorAsSelector(namespaceSelector)
	}
	s.compiled.Store(uid, c)
	return c
}

// OptedOut reports whether namespace carries OptOutLabel=disabled.
func (s *CacheState) OptedOut(ctx context.Context, namespace string) bool {
	ns := &corev1.Namespace{}
	if err := s.Reader.Get(ctx, types.NamespacedName{Name: namespace}, ns); err != nil {
		return false
	}
	return ns.Labels[OptOutLabel] == "disabled"
}

// Report returns the image's report and digest (empty when unknown).
func (s *CacheState) Report(ctx context.Context, namespace string, img policy.Image) (string, *policy.Report) {
	digest := img.Digest
	if digest == "" {
		digest = s.resolve(ctx, img.Reference())
	}
	if digest != "" {
		if rep := s.find(ctx, IndexReportDigest, digest, namespace); rep != nil {
			return digest, rep
		}
		if rep := s.find(ctx, IndexReportDigest, digest, ""); rep != nil {
			return digest, rep
		}
		return digest, nil
	}
	if img.Tag == "" {
		return "", nil
	}
	return "", s.find(ctx, IndexReportTag, img.Repository+":"+img.Tag, namespace)
}

// find returns the newest scanned report whose field index holds value, in namespace (all when
// empty).
func (s *CacheState) find(ctx context.Context, index, value, namespace string) *policy.Report {
	list := &securityv1alpha1.ImageScanReportList{}
	opts := []client.ListOption{client.MatchingFields{index: value}, client.UnsafeDisableDeepCopy}
	if namespace != "" {
		opts = append(opts, client.InNamespace(namespace))
	}
	if err := s.Reader.List(ctx, list, opts...); err != nil {
		return nil
	}
	var best *policy.Report
	for i := range list.Items {
		if r := policy.ReportOf(&list.Items[i]); r != nil && (best == nil || r.ScannedAt.After(best.ScannedAt)) {
			best = r
		}
	}
	return best
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
		digest, err = s.Digests.Resolve(ref, s.now(), lookup)
	}
	if err != nil {
		return ""
	}
	return digest
}

func (s *CacheState) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}
