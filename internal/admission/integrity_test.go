package admission

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/workload"
)

// TestObjectsOfTheClustersControllers: a pod a controller makes for an owner that runs the same
// images is not judged again; any other pod is.
func TestObjectsOfTheClustersControllers(t *testing.T) {
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", UID: "rs-uid"},
		Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/web:1"}},
		}}},
	}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(rs).Build()
	trusted := securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"trusted.example.com/**"}}}
	r := &Reviewer{
		State:           state{policies: []*workload.Policy{compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, trusted)}},
		Owners:          c,
		ControllerUsers: DefaultControllerUsers,
		Clock:           clocktesting.NewFakePassiveClock(now),
	}
	const controller = "system:serviceaccount:kube-system:replicaset-controller"
	pod := func(image string, owner *metav1.OwnerReference) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web-1-x", Namespace: "shop"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}},
		}
		if owner != nil {
			p.OwnerReferences = []metav1.OwnerReference{*owner}
		}
		return p
	}
	ownedBy := func(name string) *metav1.OwnerReference {
		return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name, UID: "rs-uid", Controller: ptr.To(true)}
	}
	tests := map[string]struct {
		user        string
		pod         *corev1.Pod
		wantAllowed bool
	}{
		"the ReplicaSet's pod":           {user: controller, pod: pod("registry.example.com/web:1", ownedBy("web-1")), wantAllowed: true},
		"another user":                   {user: "alice", pod: pod("registry.example.com/web:1", ownedBy("web-1"))},
		"other images":                   {user: controller, pod: pod("registry.example.com/web:2", ownedBy("web-1"))},
		"an owner that does not exist":   {user: controller, pod: pod("registry.example.com/web:1", ownedBy("web-2"))},
		"an owner of another UID":        {user: controller, pod: pod("registry.example.com/web:1", &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-1", UID: "other", Controller: ptr.To(true)})},
		"no controlling owner":           {user: controller, pod: pod("registry.example.com/web:1", nil)},
		"an owner not judged at its pod": {user: controller, pod: pod("registry.example.com/web:1", &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "web-1", UID: "rs-uid", Controller: ptr.To(true)})},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			d, err := r.Review(context.Background(), Request{
				Endpoint: EndpointValidate, Namespace: "shop", Containers: workload.Containers(&tt.pod.Spec),
				PodSpec: &tt.pod.Spec, User: tt.user, Object: tt.pod, ObjectKind: schema.GroupKind{Kind: "Pod"},
			})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(d.Allowed).To(Equal(tt.wantAllowed), d.Message)
			if tt.wantAllowed {
				g.Expect(d.Warnings).To(ConsistOf(ContainSubstring("ReplicaSet/web-1, which runs the same images")))
			} else {
				g.Expect(d.Message).To(ContainSubstring("registries"))
			}
		})
	}
}

// hungResolver never answers: it returns when ctx ends, counting how many lookups ran at once.
type hungResolver struct {
	running, most atomic.Int32
	mu            sync.Mutex
	deadlines     []bool
}

func (h *hungResolver) ResolveDigest(ctx context.Context, _ string, _ authn.Keychain) (string, error) {
	n := h.running.Add(1)
	defer h.running.Add(-1)
	for {
		m := h.most.Load()
		if n <= m || h.most.CompareAndSwap(m, n) {
			break
		}
	}
	_, ok := ctx.Deadline()
	h.mu.Lock()
	h.deadlines = append(h.deadlines, ok)
	h.mu.Unlock()
	<-ctx.Done()
	return "", ctx.Err()
}

// TestHungRegistriesAreUnscannedWithinTheBudget: tags on registries that never answer are looked
// up in parallel, under the request's deadline, and count as unscanned when it passes: under
// onUnscanned Deny the request is refused; a digest reference's known findings still count.
func TestHungRegistriesAreUnscannedWithinTheBudget(t *testing.T) {
	g := NewWithT(t)
	critical := scannedReport("shop", "known", "registry.example.com/known", digest, nil, 1)
	lastSeen := scannedReport("shop", "last-seen", "hung-tagged.example.com/app", "sha256:"+strings.Repeat("7", 64), []string{"1"}, 2)
	c := indexedClient(critical, lastSeen)
	resolver := &hungResolver{}
	s := &CacheState{
		Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: c, Resolver: resolver,
		Digests: &registry.DigestCache{TTL: time.Minute, FailureTTL: 30 * time.Second}, Clock: clocktesting.NewFakePassiveClock(now),
	}
	rules := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](5)}}
	r := &Reviewer{
		State: s, Budget: 300 * time.Millisecond, Clock: clocktesting.NewFakePassiveClock(now),
		FailurePolicy: FailureIgnore,
	}
	for _, unscanned := range []securityv1alpha1.UnscannedAction{securityv1alpha1.UnscannedDeny, securityv1alpha1.UnscannedAllow} {
		s.Digests = &registry.DigestCache{TTL: time.Minute, FailureTTL: 30 * time.Second}
		s.Gatherer = workload.NewGatherer(c, "")
		r.State = &stateWithPolicies{CacheState: s, policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/scanned", securityv1alpha1.EnforcementEnforce, unscanned, rules)}}
		var containers []workload.Container
		for i := range 3 {
			containers = append(containers, workload.Container{Name: fmt.Sprint("c", i), Image: fmt.Sprintf("hung-%d.example.com/app:1", i), Type: workload.RegularContainer})
		}
		d, err := r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "shop", Containers: containers})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(d.Allowed).To(Equal(unscanned == securityv1alpha1.UnscannedAllow), d.Message)
		if unscanned == securityv1alpha1.UnscannedDeny {
			g.Expect(d.Message).To(ContainSubstring("hung-2.example.com/app:1: not scanned yet (onUnscanned: Deny)"))
			// Measured before the next request: this one's lookups may still be ending.
			g.Expect(resolver.most.Load()).To(BeEquivalentTo(3), "the three lookups ran at once")
		}
		g.Expect(d.Unscanned).To(HaveLen(3))
	}
	resolver.mu.Lock()
	g.Expect(resolver.deadlines).To(HaveEach(BeTrue()), "every lookup ran under the request's deadline")
	resolver.mu.Unlock()

	// A known critical finding counts whatever the clock: a digest reference beside a hung tag.
	maxZero := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}
	s.Digests = &registry.DigestCache{TTL: time.Minute, FailureTTL: 30 * time.Second}
	r.State = &stateWithPolicies{CacheState: s, policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, maxZero)}}
	d, err := r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "shop", Containers: []workload.Container{
		{Name: "hung", Image: "hung-9.example.com/app:1", Type: workload.RegularContainer},
		{Name: "known", Image: "registry.example.com/known@" + digest, Type: workload.RegularContainer},
	}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeFalse())
	g.Expect(d.Message).To(ContainSubstring("registry.example.com/known@" + digest + ": vulnerabilities: 1 critical (max 0)"))

	// A tag that cannot be resolved now is refused by what its last digest is known to have.
	d, err = r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "shop", Containers: []workload.Container{
		{Name: "app", Image: "hung-tagged.example.com/app:1", Type: workload.RegularContainer},
	}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeFalse())
	g.Expect(d.Message).To(ContainSubstring("hung-tagged.example.com/app:1: vulnerabilities: 2 critical (max 0)"))
}

// stateWithPolicies is a CacheState whose policies are given, not read.
type stateWithPolicies struct {
	*CacheState
	policies []*workload.Policy
}

func (s *stateWithPolicies) Policies(context.Context, string, ...map[string]string) ([]*workload.Policy, error) {
	return s.policies, nil
}

func scannedReport(ns, name, image, dig string, tags []string, critical int32) *securityv1alpha1.ImageScanReport {
	at := metav1.NewTime(now)
	return &securityv1alpha1.ImageScanReport{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       securityv1alpha1.ImageScanReportSpec{Image: image, Digest: dig, Tags: tags},
		Status: securityv1alpha1.ImageScanReportStatus{
			LastScanTime: &at, Summary: &securityv1alpha1.VulnerabilitySummary{Critical: critical, Total: critical},
		},
	}
}

// privateResolver answers anonymous callers 401 for private.example.com, and every caller with
// credentials.
type privateResolver struct{ calls atomic.Int32 }

func (p *privateResolver) ResolveDigest(_ context.Context, ref string, keychain authn.Keychain) (string, error) {
	p.calls.Add(1)
	if keychain != nil { // as go-containerregistry does before its requests
		r, err := name.ParseReference(ref)
		if err != nil {
			return "", err
		}
		if _, err := keychain.Resolve(r.Context()); err != nil {
			return "", err
		}
	}
	if strings.HasPrefix(ref, "private.example.com/") && keychain == nil {
		return "", registry.Errorf(registry.KindUnauthorized, "401")
	}
	return digest, nil
}

// TestPullSecretsOnlyWhenTheRegistryAsks: a public tag is resolved anonymously, reading no
// service account or Secret; a private one is asked again with the pod's pull secrets.
func TestPullSecretsOnlyWhenTheRegistryAsks(t *testing.T) {
	g := NewWithT(t)
	var reads atomic.Int32
	secrets := countingReads(&reads)
	c := indexedClient()
	resolver := &privateResolver{}
	s := &CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: secrets, Resolver: resolver, Clock: clocktesting.NewFakePassiveClock(now)}
	images := []policy.Image{{Repository: "public.example.com/app", Tag: "1"}}
	digests, _, _ := s.Reports(context.Background(), "shop", nil, images, []bool{true})
	g.Expect(digests).To(Equal([]string{digest}))
	g.Expect(reads.Load()).To(BeZero(), "no pull secret read for a public image")
	g.Expect(resolver.calls.Load()).To(BeEquivalentTo(1))

	images = []policy.Image{{Repository: "private.example.com/app", Tag: "1"}}
	digests, _, _ = s.Reports(context.Background(), "shop", nil, images, []bool{true})
	g.Expect(digests).To(Equal([]string{digest}))
	g.Expect(reads.Load()).To(BeEquivalentTo(1), "the default service account, read once")
	g.Expect(resolver.calls.Load()).To(BeEquivalentTo(3))
}

// indexedClient is a fake cache holding objs, with the report indexes the Gatherer reads.
func indexedClient(objs ...client.Object) client.Client {
	b := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(objs...)
	for name, index := range workload.ReportIndexes {
		b = b.WithIndex(&securityv1alpha1.ImageScanReport{}, name, index)
	}
	return b.Build()
}

// countingReads is an empty client for Secrets and service accounts that counts its Gets.
func countingReads(reads *atomic.Int32) client.Client {
	return fake.NewClientBuilder().WithScheme(scheme.New()).WithInterceptorFuncs(interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			reads.Add(1)
			return c.Get(ctx, key, obj, opts...)
		},
	}).Build()
}
