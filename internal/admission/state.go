package admission

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/imageguard/imageguard/internal/imageref"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/signature"
	"github.com/imageguard/imageguard/internal/workload"
)

// Resolver turns a tag into the digest it points at now, with the credentials of keychain.
type Resolver interface {
	ResolveDigest(ctx context.Context, ref string, keychain authn.Keychain) (string, error)
}

// CacheState is the State of a running manager: policies and reports come from the Gatherer, over
// the informer cache (never the API server); tags are resolved to digests through a cache, in
// parallel, within the request's context: anonymously first, and with the pull secrets of the pod
// spec (read by name, uncached) only when the registry refuses an anonymous caller. A registry
// that timed out is not asked again for a while, and the lookups in flight are bounded, so that a
// flood of requests naming hung registries costs neither connections without end nor the
// controller's API budget. A report is found by digest in the request's namespace, then in any
// namespace (a digest's findings are the same everywhere).
type CacheState struct {
	Gatherer *workload.Gatherer
	// Reader reads namespaces (the opt-out label), from the cache.
	Reader client.Reader
	// Secrets reads service accounts and pull secrets by name: uncached.
	Secrets client.Reader
	// Resolver looks tags up; nil never resolves (tag references are then unscanned).
	Resolver Resolver
	// Digests keeps tag lookups per namespace; nil looks every tag up again.
	Digests *registry.DigestCache
	// Verifier verifies signatures, keeping verdicts (shared with the report controller); nil:
	// only the verdicts reports hold are known.
	Verifier *signature.Verifier
	// MaxLookups bounds the registry lookups in flight (default 64), and a quarter of them the
	// lookups of one namespace, so that no namespace starves the others; a tag beyond is unscanned.
	MaxLookups int
	// HungFor is how long a registry that timed out is not asked again (default 30s).
	HungFor time.Duration
	// ExtraNodePlatforms are the platforms of nodes that may join (an autoscaler's), as
	// workload.NodePlatform gives them: asked for as those of the nodes in the cluster are.
	ExtraNodePlatforms []string
	Clock              clock.PassiveClock

	once     sync.Once
	inflight chan struct{}
	mu       sync.Mutex
	hung     map[string]time.Time // registry host -> when it may be asked again
	perNS    map[string]int       // namespace -> lookups in flight
}

// maxReferenceLength bounds the references looked up: longer ones are unscanned (go-containerregistry
// takes hosts of any length; what is kept of a lookup is as long as its reference).
const maxReferenceLength = 1024

var _ State = (*CacheState)(nil)

// Policies returns the valid policies that apply in namespace to a workload with any of the
// label sets.
func (s *CacheState) Policies(ctx context.Context, namespace string, labelSets ...map[string]string) ([]*workload.Policy, error) {
	all, err := s.Gatherer.PoliciesFor(ctx, namespace)
	if err != nil || len(labelSets) == 0 {
		return all, err
	}
	out := all[:0]
	for _, p := range all {
		if p.SelectsLabels(labelSets...) {
			out = append(out, p)
		}
	}
	return out, nil
}

// NodePlatforms returns the platforms of the nodes a pod of spec may land on, from the cache, and
// ExtraNodePlatforms (see State). A node counts unless the pod's node selector or required node
// affinity rules it out: the kubelet refuses such a pod whatever sets its node (spec.nodeName
// too). Taints do not rule a node out: a pod made from a template may get tolerations the
// template has not (a DaemonSet's, a namespace's defaults, a mutating webhook's), and a node's
// taints change (not-ready, cordoned).
func (s *CacheState) NodePlatforms(ctx context.Context, spec *corev1.PodSpec) ([]string, error) {
	nodes := &corev1.NodeList{}
	if err := s.Reader.List(ctx, nodes, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing the cluster's nodes: %w", err)
	}
	var affinity nodeaffinity.RequiredNodeAffinity
	if spec != nil {
		affinity = nodeaffinity.GetRequiredNodeAffinity(&corev1.Pod{Spec: *spec})
	}
	out := slices.Clone(s.ExtraNodePlatforms)
	for i := range nodes.Items {
		node := &nodes.Items[i]
		info := node.Status.NodeInfo
		p := workload.NodePlatform(info.OperatingSystem, info.Architecture)
		if info.Architecture == "" {
			p = UnknownPlatform // registered, its kubelet not heard from yet: it may be any
		}
		if slices.Contains(out, p) {
			continue
		}
		if spec != nil {
			if ok, err := affinity.Match(node); err != nil || !ok {
				continue // the kubelet would not run it there (a malformed term places it nowhere)
			}
		}
		out = append(out, p)
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

// Reports returns the digests and reports of images (see State). Lookups run in parallel and end
// with ctx: an image whose digest is not known by then has no report.
func (s *CacheState) Reports(ctx context.Context, namespace string, spec *corev1.PodSpec, images []policy.Image, resolve []bool) ([]string, []*policy.Report, []*policy.Report) {
	digests := make([]string, len(images))
	type answer struct {
		i      int
		digest string
	}
	answers := make(chan answer, len(images)) // buffered: a lookup ending after ctx never blocks
	pending := 0
	keychain := workload.LazyKeychain(func() (authn.Keychain, error) {
		return workload.Keychain(ctx, s.Secrets, namespace, spec)
	})
	for i, img := range images {
		digests[i] = img.Digest
		if img.Digest != "" || !resolve[i] || s.Resolver == nil {
			continue
		}
		pending++
		go func(i int, ref string) {
			lookup := func() (string, error) { return s.lookup(ctx, namespace, ref, keychain) }
			var digest string
			var err error
			if s.Digests == nil {
				digest, err = lookup()
			} else {
				// Per namespace: credentials differ from one to the next.
				digest, err = s.Digests.Resolve(namespace+"/"+ref, s.Clock.Now(), lookup)
			}
			if err != nil {
				digest = ""
			}
			answers <- answer{i, digest}
		}(i, img.Reference())
	}
collect:
	for ; pending > 0; pending-- {
		select {
		case a := <-answers:
			digests[a.i] = a.digest
		case <-ctx.Done():
			break collect // the rest is unscanned
		}
	}
	// Reports are read from memory even when the budget is spent: a known finding must never be
	// lost to the clock.
	cache := context.WithoutCancel(ctx)
	reports := make([]*policy.Report, len(images))
	lastKnown := make([]*policy.Report, len(images))
	for i, img := range images {
		if digests[i] == "" {
			lastKnown[i] = s.Gatherer.LastKnown(cache, namespace, img) // by the tag the pod controller saw
			continue
		}
		img.Digest = digests[i]
		reports[i] = s.Gatherer.Report(cache, namespace, img)
	}
	return digests, reports, lastKnown
}

// failedVerdictAge is how old a failed signature verdict may be at admission: an image signed a
// moment ago is then admitted at the next try, while a flood of refused creates costs a
// signature read per digest every 30s at most.
const failedVerdictAge = 30 * time.Second

// Signatures returns img's verdicts under sets (see State): the Verifier's, kept or verified
// within ctx, else what img's report holds.
func (s *CacheState) Signatures(ctx context.Context, namespace string, spec *corev1.PodSpec, img policy.Image, sets []*policy.SignatureAuthorities) map[string]policy.SignatureVerdict {
	known := s.Gatherer.Signatures(context.WithoutCancel(ctx), namespace, img)
	out := make(map[string]policy.SignatureVerdict, len(sets))
	if s.Verifier == nil {
		for _, a := range sets {
			if v, ok := known[a.ID]; ok && !v.Verified {
				out[a.ID] = v
			}
		}
		return out
	}
	// The verification outlives the request: its keychain reads the pull secrets on its own
	// deadline, not the request's.
	keychain := workload.LazyKeychain(func() (authn.Keychain, error) {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return workload.Keychain(kctx, s.Secrets, namespace, spec)
	})
	type answer struct {
		id string
		v  policy.SignatureVerdict
		ok bool
	}
	answers := make(chan answer, len(sets))
	for _, a := range sets {
		go func(a *policy.SignatureAuthorities) {
			k := signature.Key{Namespace: namespace, Digest: img.Digest, Authorities: a.ID}
			maxAge := time.Duration(0)
			if v, ok, _ := s.Verifier.Cached(k, 0); ok && !v.Verified {
				maxAge = failedVerdictAge
			}
			v, ok := s.Verifier.Check(ctx, k, a, img.Repository, keychain, maxAge)
			answers <- answer{a.ID, v.Policy(), ok}
		}(a)
	}
	for range sets {
		a := <-answers
		if a.ok {
			out[a.id] = a.v
		} else if v, ok := known[a.id]; ok && !v.Verified {
			// Not verified in time: a report's failed verdict still refuses, but what a report
			// says never admits (a status is writable by whoever may patch it, and may be old).
			out[a.id] = v
		}
	}
	return out
}

// errNotAsked is a lookup ImageGuard did not make: its registry timed out a moment ago, too many
// lookups are in flight, or the reference is too long. It is not kept as an answer.
var errNotAsked = fmt.Errorf("registry not asked (it timed out recently, too many lookups are in flight, or the reference is too long): %w", registry.ErrNotAsked)

// lookup resolves ref anonymously, and with keychain when the registry refuses an anonymous
// caller; a registry that times out is marked hung for HungFor.
func (s *CacheState) lookup(ctx context.Context, namespace, ref string, keychain authn.Keychain) (string, error) {
	s.once.Do(func() {
		if s.MaxLookups <= 0 {
			s.MaxLookups = 64
		}
		if s.HungFor <= 0 {
			s.HungFor = 30 * time.Second
		}
		s.inflight = make(chan struct{}, s.MaxLookups)
		s.hung = map[string]time.Time{}
		s.perNS = map[string]int{}
	})
	if len(ref) > maxReferenceLength {
		return "", errNotAsked
	}
	host := registryHost(ref)
	s.mu.Lock()
	until, hung := s.hung[host]
	s.mu.Unlock()
	if hung && s.Clock.Now().Before(until) {
		return "", errNotAsked
	}
	s.mu.Lock()
	if s.perNS[namespace] >= max(1, s.MaxLookups/4) {
		s.mu.Unlock()
		return "", errNotAsked
	}
	s.perNS[namespace]++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.perNS[namespace]--; s.perNS[namespace] == 0 {
			delete(s.perNS, namespace)
		}
		s.mu.Unlock()
	}()
	select {
	case s.inflight <- struct{}{}:
		defer func() { <-s.inflight }()
	default:
		return "", errNotAsked
	}
	digest, err := s.Resolver.ResolveDigest(ctx, ref, nil)
	if registry.KindOf(err) == registry.KindUnauthorized {
		digest, err = s.Resolver.ResolveDigest(ctx, ref, keychain)
	}
	if registry.KindOf(err) == registry.KindTimeout {
		now := s.Clock.Now()
		s.mu.Lock()
		if len(s.hung) >= 1024 { // hosts a caller names are many: keep only those still hung
			for h, until := range s.hung {
				if !now.Before(until) {
					delete(s.hung, h)
				}
			}
		}
		s.hung[host] = now.Add(s.HungFor)
		s.mu.Unlock()
	}
	return digest, err
}

// registryHost is ref's registry host, canonical; "" when ref does not parse.
func registryHost(ref string) string {
	r, err := name.ParseReference(ref)
	if err != nil {
		return ""
	}
	return imageref.CanonicalHost(r.Context().RegistryStr())
}
