package admission

// Attacks an adversarial review of admission found: each worked once (the comments say how), and
// each test fails if it works again.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/workload"
)

func validate(t *testing.T, h *webhook.Admission, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	t.Helper()
	req.UID = "1"
	raw, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: req})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	hr := httptest.NewRequest(http.MethodPost, ValidatePath, strings.NewReader(string(raw)))
	hr.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(rec, hr)
	out := admissionv1.AdmissionReview{}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err, rec.Body.String())
	}
	return out.Response
}

func mustJSON(t *testing.T, o any) []byte {
	t.Helper()
	raw, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// 1. An image volume (spec.volumes[].image.reference, GA in Kubernetes 1.35) mounts an OCI image
// that no rule ever sees: workload.Containers lists containers only. And an update that adds one
// to a Deployment's template is "images unchanged".
func TestAttackImageVolumesAreJudged(t *testing.T) {
	g := NewWithT(t)
	trusted := securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}}}
	reviewer := &Reviewer{
		State: state{policies: []*workload.Policy{compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, trusted)}},
		Clock: clocktesting.NewFakePassiveClock(now),
	}
	h := &webhook.Admission{Handler: NewWorkloadValidator(reviewer, scheme.New())}
	spec := corev1.PodSpec{
		Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/busybox:1", Command: []string{"/payload/run"},
			VolumeMounts: []corev1.VolumeMount{{Name: "payload", MountPath: "/payload"}}}},
		Volumes: []corev1.Volume{{Name: "payload", VolumeSource: corev1.VolumeSource{
			Image: &corev1.ImageVolumeSource{Reference: "evil.io/payload:1", PullPolicy: corev1.PullAlways}}}},
	}
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"}, Spec: spec}
	resp := validate(t, h, &admissionv1.AdmissionRequest{
		Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: "shop", Operation: admissionv1.Create, Object: k8sruntime.RawExtension{Raw: mustJSON(t, pod)},
	})
	g.Expect(resp.Allowed).To(BeFalse(), "a pod mounting evil.io/payload:1 was admitted under registries.allowed [registry.example.com/**]")
}

// prodOnlyPolicy enforces trusted registries on the workloads of namespace shop labelled tier=prod.
func prodOnlyPolicy() *securityv1alpha1.ImagePolicy {
	return &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "prod-trusted", Namespace: "shop", UID: "pol-uid", Generation: 1},
		Spec: securityv1alpha1.ImagePolicySpec{
			Enforcement: securityv1alpha1.EnforcementEnforce,
			Match:       securityv1alpha1.ImageMatch{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "prod"}}},
			Rules:       securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}}},
		},
	}
}

// 2. Policies select a workload by the labels of the object admitted: a Deployment's own
// metadata.labels. Its pods carry the template's labels. A Deployment without the label whose
// template has it is judged without the policy; the ReplicaSet and pods the controllers make from
// it, which carry the label, are "not judged again".
func TestAttackLabelScopedPolicySeesThePodsLabels(t *testing.T) {
	g := NewWithT(t)
	prodOnly := prodOnlyPolicy()
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"tier": "prod", "app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "evil.io/web:1"}}},
	}
	d := &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "dep-uid"}, // no tier label of its own
		Spec:       appsv1.DeploymentSpec{Template: template}}
	c := indexedClient(prodOnly, d)
	reviewer := &Reviewer{
		State:  &CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: c, Clock: clocktesting.NewFakePassiveClock(now)},
		Owners: c, ControllerUsers: DefaultControllerUsers, Clock: clocktesting.NewFakePassiveClock(now),
	}
	h := &webhook.Admission{Handler: NewWorkloadValidator(reviewer, scheme.New())}

	// A bare pod labelled tier=prod running evil.io is refused: the policy works.
	bare := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "bare", Namespace: "shop", Labels: template.Labels}, Spec: template.Spec}
	resp := validate(t, h, &admissionv1.AdmissionRequest{
		Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Namespace: "shop", Operation: admissionv1.Create,
		Object: k8sruntime.RawExtension{Raw: mustJSON(t, bare)}, UserInfo: userInfo("alice"),
	})
	g.Expect(resp.Allowed).To(BeFalse())

	// The Deployment: admitted, the policy does not select it.
	resp = validate(t, h, &admissionv1.AdmissionRequest{
		Kind: metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, Namespace: "shop", Operation: admissionv1.Create,
		Object: k8sruntime.RawExtension{Raw: mustJSON(t, d)}, UserInfo: userInfo("alice"),
	})
	t.Logf("Deployment without the label, template with it: allowed=%v", resp.Allowed)

	// Its ReplicaSet, as the deployment controller makes it: the template's labels.
	rs := &appsv1.ReplicaSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "ReplicaSet"},
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", UID: "rs-uid", Labels: template.Labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "web", UID: "dep-uid", Controller: ptr.To(true)}}},
		Spec: appsv1.ReplicaSetSpec{Template: template}}
	g.Expect(c.Create(context.Background(), rs.DeepCopy())).To(Succeed())
	rsResp := validate(t, h, &admissionv1.AdmissionRequest{
		Kind: metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "ReplicaSet"}, Namespace: "shop", Operation: admissionv1.Create,
		Object: k8sruntime.RawExtension{Raw: mustJSON(t, rs)}, UserInfo: userInfo("system:serviceaccount:kube-system:deployment-controller"),
	})
	// Its pod, as the replicaset controller makes it: labelled tier=prod, running evil.io.
	pod := bare.DeepCopy()
	pod.Name = "web-1-x"
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-1", UID: "rs-uid", Controller: ptr.To(true)}}
	podResp := validate(t, h, &admissionv1.AdmissionRequest{
		Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Namespace: "shop", Operation: admissionv1.Create,
		Object: k8sruntime.RawExtension{Raw: mustJSON(t, pod)}, UserInfo: userInfo("system:serviceaccount:kube-system:replicaset-controller"),
	})
	g.Expect(resp.Allowed && rsResp.Allowed && podResp.Allowed).To(BeFalse(),
		"a pod labelled tier=prod runs evil.io/web:1 though ImagePolicy/shop/prod-trusted refuses it: Deployment %v, ReplicaSet %v, pod %v (%v)",
		resp.Allowed, rsResp.Allowed, podResp.Allowed, podResp.Warnings)
}

// 2b. The same through an update: relabelling the template into a policy's scope keeps the
// images, so it is "images unchanged" and never judged by the policy it now falls under.
func TestAttackRelabelIntoScopeIsJudged(t *testing.T) {
	g := NewWithT(t)
	prodOnly := prodOnlyPolicy()
	c := indexedClient(prodOnly)
	reviewer := &Reviewer{
		State: &CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: c, Clock: clocktesting.NewFakePassiveClock(now)},
		Clock: clocktesting.NewFakePassiveClock(now),
	}
	h := &webhook.Admission{Handler: NewWorkloadValidator(reviewer, scheme.New())}
	mk := func(labels map[string]string) []byte {
		return mustJSON(t, &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Labels: labels},
			Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "evil.io/web:1"}}}}}})
	}
	dev, prod := mk(map[string]string{"tier": "dev"}), mk(map[string]string{"tier": "prod"})
	kind := metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	created := validate(t, h, &admissionv1.AdmissionRequest{Kind: kind, Namespace: "shop", Operation: admissionv1.Create, Object: k8sruntime.RawExtension{Raw: prod}})
	g.Expect(created.Allowed).To(BeFalse(), "created with tier=prod: refused")
	updated := validate(t, h, &admissionv1.AdmissionRequest{Kind: kind, Namespace: "shop", Operation: admissionv1.Update,
		Object: k8sruntime.RawExtension{Raw: prod}, OldObject: k8sruntime.RawExtension{Raw: dev}})
	g.Expect(updated.Allowed).To(BeFalse(), "relabelled tier=dev -> tier=prod: %v", updated.Result)
}

// A relabelled workload whose images did not change is judged only by the policies its new labels
// bring it under: a policy that applied before already judged it (or was made after it, and
// chose, by judging updates only, not to stop what runs).
func TestRelabelIsJudgedOnlyByTheAddedPolicies(t *testing.T) {
	g := NewWithT(t)
	everywhere := &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "trusted", Namespace: "shop", UID: "all-uid", Generation: 1},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce,
			Rules: securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}}}},
	}
	pinned := &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "prod-pinned", Namespace: "shop", UID: "prod-uid", Generation: 1},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce,
			Match: securityv1alpha1.ImageMatch{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "prod"}}},
			Rules: securityv1alpha1.PolicyRules{Tags: &securityv1alpha1.TagRule{DisallowLatest: true}}},
	}
	c := indexedClient(everywhere, pinned)
	reviewer := &Reviewer{
		State: &CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: c, Clock: clocktesting.NewFakePassiveClock(now)},
		Clock: clocktesting.NewFakePassiveClock(now),
	}
	h := &webhook.Admission{Handler: NewWorkloadValidator(reviewer, scheme.New())}
	mk := func(tier, image string) []byte {
		labels := map[string]string{"tier": tier}
		return mustJSON(t, &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Labels: labels},
			Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}}}})
	}
	kind := metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	update := func(old, updated []byte) *admissionv1.AdmissionResponse {
		return validate(t, h, &admissionv1.AdmissionRequest{Kind: kind, Namespace: "shop", Operation: admissionv1.Update,
			Object: k8sruntime.RawExtension{Raw: updated}, OldObject: k8sruntime.RawExtension{Raw: old}})
	}
	// evil.io/web:1 breaks ImagePolicy/shop/trusted, which applied before: only prod-pinned judges.
	resp := update(mk("dev", "evil.io/web:1"), mk("prod", "evil.io/web:1"))
	g.Expect(resp.Allowed).To(BeTrue(), "%v", resp.Result)
	// evil.io/web (latest) breaks prod-pinned, which it now falls under: refused, by it alone.
	resp = update(mk("dev", "evil.io/web"), mk("prod", "evil.io/web"))
	g.Expect(resp.Allowed).To(BeFalse())
	g.Expect(resp.Result.Message).To(ContainSubstring("ImagePolicy/shop/prod-pinned: evil.io/web:latest: tags"))
	g.Expect(resp.Result.Message).NotTo(ContainSubstring("ImagePolicy/shop/trusted"))
	// A changed image is judged by every policy.
	resp = update(mk("prod", "registry.example.com/web:1"), mk("prod", "evil.io/web"))
	g.Expect(resp.Result.Message).To(ContainSubstring("ImagePolicy/shop/trusted"))
	g.Expect(resp.Result.Message).To(ContainSubstring("ImagePolicy/shop/prod-pinned"))
}

func userInfo(name string) authenticationv1.UserInfo {
	return authenticationv1.UserInfo{Username: name}
}

// 3. Under onUnscanned: Allow (the default), a tag whose digest has known critical findings is
// refused only while its lookup succeeds. One request with more tags than MaxLookups (64) makes
// the rest "not asked", and that failure is kept for 30 s per namespace and tag: the same tag,
// alone, is then admitted. No hung registry is needed: the siblings are 404s of the trusted
// registry, answered in 20 ms.
func TestAttackStarvedLookupStillRefusesAKnownCriticalTag(t *testing.T) {
	g := NewWithT(t)
	const criticalDigest = "sha256:c0ffee0000000000000000000000000000000000000000000000000000c0ffee"
	known := scannedReport("elsewhere", "app-c0ffee000000", "registry.example.com/app", criticalDigest, []string{"1.14"}, 3)
	c := indexedClient(known)
	resolver := &tableResolver{tags: map[string]string{"registry.example.com/app:1.14": criticalDigest}, delay: 20 * time.Millisecond}
	clk := clocktesting.NewFakePassiveClock(now)
	s := &CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: c, Resolver: resolver, Clock: clk,
		Digests: &registry.DigestCache{TTL: 5 * time.Minute, FailureTTL: 30 * time.Second}}
	rules := securityv1alpha1.PolicyRules{
		Registries:      &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}},
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
	}
	r := &Reviewer{State: &stateWithPolicies{CacheState: s, policies: []*workload.Policy{
		compiled(t, "ClusterImagePolicy/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, rules)}},
		Budget: 3 * time.Second, Clock: clk, FailurePolicy: FailureIgnore}
	target := workload.Container{Name: "app", Image: "registry.example.com/app:1.14", Type: workload.RegularContainer}

	// In another namespace, the same tag is refused: its digest is known critical.
	d, err := r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "control", Containers: []workload.Container{target}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeFalse())
	g.Expect(d.Message).To(ContainSubstring("3 critical (max 0)"))

	// The attacker's dry runs: the target among 1000 init containers naming missing tags. The
	// target is not looked up (no slot), and is refused all the same by what its tag last named.
	for try := range 5 {
		containers := []workload.Container{}
		for i := range 1000 {
			containers = append(containers, workload.Container{Name: fmt.Sprint("i", i), Image: fmt.Sprintf("registry.example.com/app:missing-%d-%d", try, i), Type: workload.InitContainer})
		}
		containers = append(containers, target)
		d, err = r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "attacker", Containers: containers, DryRun: true})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(d.Allowed).To(BeFalse())
	}
	// The real pod, alone, seconds later: its lookup is the kept failure.
	d, err = r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "attacker", Containers: []workload.Container{target}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeFalse(), "registry.example.com/app:1.14 (3 known critical) admitted: %v / %v", d.Message, d.Warnings)
}

// tableResolver answers the tags it knows, NotFound for others, after delay.
type tableResolver struct {
	tags  map[string]string
	delay time.Duration
	calls atomic.Int64
}

func (r *tableResolver) ResolveDigest(ctx context.Context, ref string, _ authn.Keychain) (string, error) {
	r.calls.Add(1)
	select {
	case <-time.After(r.delay):
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if d, ok := r.tags[ref]; ok {
		return d, nil
	}
	return "", registry.Errorf(registry.KindNotFound, "%s: 404", ref)
}

// 4. The digest cache is keyed by namespace and reference and has no size bound: a caller that
// names distinct tags keeps everything it named for 30 s (failures) or 5 min (answers). A
// reference may be long (a name of 255 characters, a tag of 128).
func TestAttackDigestCacheIsBounded(t *testing.T) {
	g := NewWithT(t)
	c := indexedClient()
	clk := clocktesting.NewFakePassiveClock(now)
	res := &tableResolver{}
	s := &CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: c, Resolver: res, Clock: clk,
		Digests: &registry.DigestCache{TTL: 5 * time.Minute, FailureTTL: 30 * time.Second}}
	rules := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}
	r := &Reviewer{State: &stateWithPolicies{CacheState: s, policies: []*workload.Policy{
		compiled(t, "ClusterImagePolicy/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, rules)}},
		Budget: 3 * time.Second, Clock: clk}
	// An 8 KB host (url.Parse accepts it) is refused as malformed: no runtime pulls it.
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 8000) + ".example.com"
	d, err := r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "attacker",
		Containers: []workload.Container{{Name: "c", Image: long + "/app:1", Type: workload.RegularContainer}}, DryRun: true})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeFalse())
	g.Expect(d.Message).To(ContainSubstring("malformed image reference"))
	host := strings.Repeat("a", 60) + "." + strings.Repeat("b", 170) + ".example.com" // the longest name the grammar takes
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const requests, perRequest = 40, 100
	for n := range requests {
		var containers []workload.Container
		for i := range perRequest {
			containers = append(containers, workload.Container{Name: fmt.Sprint("c", i), Image: fmt.Sprintf("%s/app:%d-%d", host, n, i), Type: workload.RegularContainer})
		}
		d, err := r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "attacker", Containers: containers, DryRun: true})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(d.Allowed).To(BeTrue())
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	retained := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	runtime.KeepAlive(s) // the controller's CacheState lives as long as the process
	t.Logf("resolver calls: %d", res.calls.Load())
	t.Logf("%d dry-run requests of %d references of %d bytes: %d MB retained, kept until the next sweep", requests, perRequest, len(host), retained>>20)
	g.Expect(retained).To(BeNumerically("<", 8<<20), "memory a caller's distinct references keep")
}

// 5. The pull secrets a pod names are read one GET each, uncached, whenever a registry answers
// 401: a pod spec naming thousands of imagePullSecrets costs thousands of API requests (at the
// controller's client QPS, shared with everything else it reads).
func TestAttackPullSecretNamesAreBounded(t *testing.T) {
	g := NewWithT(t)
	var reads atomic.Int32
	secrets := countingReads(&reads)
	c := indexedClient()
	s := &CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: secrets, Resolver: &privateResolver{}, Clock: clocktesting.NewFakePassiveClock(now)}
	spec := &corev1.PodSpec{}
	for i := range 5000 {
		spec.ImagePullSecrets = append(spec.ImagePullSecrets, corev1.LocalObjectReference{Name: fmt.Sprint("s", i)})
	}
	images := []policy.Image{{Repository: "private.example.com/app", Tag: "1"}}
	s.Reports(context.Background(), "attacker", spec, images, []bool{true})
	g.Expect(reads.Load()).To(BeNumerically("<=", 20), "API reads for one lookup of one image")
}

var _ = schema.GroupKind{}

// 7. A policy scoped by match.images to a registry does not apply to another spelling of its
// default port, which the runtime dials as 443 all the same.
func TestAttackPortSpellingsFallUnderAScopedPolicy(t *testing.T) {
	g := NewWithT(t)
	const critical = "sha256:c0ffee0000000000000000000000000000000000000000000000000000c0ffee"
	c := indexedClient(scannedReport("shop", "app-c0ffee000000", "registry.example.com/app", critical, nil, 2))
	scoped := &securityv1alpha1.ClusterImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "internal-no-critical", UID: "u", Generation: 1},
		Spec: securityv1alpha1.ClusterImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce,
			Match: securityv1alpha1.ClusterImageMatch{ImageMatch: securityv1alpha1.ImageMatch{Images: []string{"registry.example.com/**"}}},
			Rules: securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}},
	}
	g.Expect(c.Create(context.Background(), scoped)).To(Succeed())
	r := &Reviewer{State: &CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: c, Clock: clocktesting.NewFakePassiveClock(now)},
		Clock: clocktesting.NewFakePassiveClock(now)}
	for _, ref := range []string{"registry.example.com/app@" + critical, "REGISTRY.example.com:443/app@" + critical, "registry.example.com:0443/app@" + critical} {
		d, err := r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "shop",
			Containers: []workload.Container{{Name: "app", Image: ref, Type: workload.RegularContainer}}})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(d.Allowed).To(BeFalse(), "%s admitted", ref)
	}
}

// hangingResolver hangs on hosts named hung-*, answers the tags it knows otherwise.
type hangingResolver struct{ tags map[string]string }

func (r *hangingResolver) ResolveDigest(ctx context.Context, ref string, _ authn.Keychain) (string, error) {
	if strings.HasPrefix(ref, "hung-") {
		<-ctx.Done()
		return "", ctx.Err()
	}
	if d, ok := r.tags[ref]; ok {
		return d, nil
	}
	return "", registry.Errorf(registry.KindNotFound, "404")
}

// 3b. The 64 lookup slots are shared by every namespace: while one caller's request holds them
// (64 hosts that accept and never answer: one black-holed IP, 64 ports), another namespace's
// known-critical tag is "not asked", unscanned, admitted under Allow; refused under Deny.
func TestAttackLookupSlotsAreFairAcrossNamespaces(t *testing.T) {
	g := NewWithT(t)
	const criticalDigest = "sha256:c0ffee0000000000000000000000000000000000000000000000000000c0ffee"
	c := indexedClient(scannedReport("victim", "app-c0ffee000000", "registry.example.com/app", criticalDigest, nil, 3))
	clk := clocktesting.NewFakePassiveClock(now)
	s := &CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: c, Clock: clk,
		Resolver: &hangingResolver{tags: map[string]string{"registry.example.com/app:1.14": criticalDigest}},
		Digests:  &registry.DigestCache{TTL: 5 * time.Minute, FailureTTL: 30 * time.Second}}
	rules := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}
	r := &Reviewer{State: &stateWithPolicies{CacheState: s, policies: []*workload.Policy{
		compiled(t, "ClusterImagePolicy/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, rules)}},
		Budget: 2 * time.Second, Clock: clk}
	var hung []workload.Container
	for i := range 64 {
		hung = append(hung, workload.Container{Name: fmt.Sprint("c", i), Image: fmt.Sprintf("hung-10.0.0.1:%d/x/y:1", 10000+i), Type: workload.RegularContainer})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "attacker", Containers: hung, DryRun: true})
	}()
	time.Sleep(200 * time.Millisecond)
	d, err := r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "victim",
		Containers: []workload.Container{{Name: "app", Image: "registry.example.com/app:1.14", Type: workload.RegularContainer}}})
	<-done
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeFalse(), "another namespace's registry.example.com/app:1.14 (3 known critical) admitted while the attacker held the slots")
}
