package admission

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	imagepolicyv1alpha1 "k8s.io/api/imagepolicy/v1alpha1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	corev1 "k8s.io/api/core/v1"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/workload"
)

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// state is an in-memory State for unit tests of the decision.
type state struct {
	policies []*workload.Policy
	reports  map[string]*policy.Report // repository -> report
	err      error
	// resolved records the images the decision asked to look up.
	resolved *[]string
	// signatures are the verdicts by digest.
	signatures map[string]map[string]policy.SignatureVerdict
	// verifications counts the calls of Signatures, when set.
	verifications *atomic.Int32
	// nodes are the platforms of the cluster's nodes; nodesErr fails reading them.
	nodes    []string
	nodesErr error
}

func (s state) NodePlatforms(context.Context, *corev1.PodSpec) ([]string, error) {
	return s.nodes, s.nodesErr
}

func (s state) Signatures(_ context.Context, _ string, _ *corev1.PodSpec, img policy.Image, _ []*policy.SignatureAuthorities) map[string]policy.SignatureVerdict {
	if s.verifications != nil {
		s.verifications.Add(1)
	}
	return s.signatures[img.Digest]
}

func (s state) Policies(context.Context, string, ...map[string]string) ([]*workload.Policy, error) {
	return s.policies, s.err
}

func (s state) Reports(_ context.Context, _ string, _ *corev1.PodSpec, images []policy.Image, resolve []bool) ([]string, []*policy.Report, []*policy.Report) {
	digests := make([]string, len(images))
	reports := make([]*policy.Report, len(images))
	for i, img := range images {
		if resolve[i] && s.resolved != nil {
			*s.resolved = append(*s.resolved, img.Reference())
		}
		reports[i] = s.reports[img.Repository]
	}
	return digests, reports, make([]*policy.Report, len(images))
}

func (s state) OptedOut(_ context.Context, namespace string) bool { return namespace == "opted-out" }

// queue records the images given to QueueScans, and their platforms.
type queue struct{ images, platforms []string }

func (q *queue) QueueScans(_ string, images []policy.Image) {
	for _, img := range images {
		q.images = append(q.images, img.Reference())
		q.platforms = append(q.platforms, img.Platform)
	}
}

func compiled(t *testing.T, name string, enforcement securityv1alpha1.Enforcement, unscanned securityv1alpha1.UnscannedAction, rules securityv1alpha1.PolicyRules) *workload.Policy {
	p, err := policy.Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	return &workload.Policy{Ref: name, Enforcement: enforcement, OnUnscanned: unscanned, Rules: p}
}

func TestDecide(t *testing.T) {
	trusted := securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}}}
	noCritical := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}
	critical := &policy.Report{ScannedAt: now, Summary: securityv1alpha1.VulnerabilitySummary{Critical: 1, Total: 1}}
	clean := &policy.Report{ScannedAt: now}
	// Scanned but for its Java archives (no Java DB yet): it can fail a rule, never pass one.
	partial := &policy.Report{ScannedAt: now, Partial: "its Java archives were not analysed yet"}
	partialCritical := &policy.Report{ScannedAt: now, Summary: securityv1alpha1.VulnerabilitySummary{Critical: 1, Total: 1}, Partial: "its Java archives were not analysed yet"}
	// An index digest scanned on amd64 only; and on amd64 and arm64; on arm64 only; an index
	// with no arm64 image; an image manifest (one image on every platform).
	amd64Only := &policy.Report{ScannedAt: now, Index: true}
	both := &policy.Report{ScannedAt: now, Index: true, Others: []*policy.Report{{ScannedAt: now, Platform: "linux/arm64", Index: true}}}
	arm64Only := &policy.Report{ScannedAt: now, Platform: "linux/arm64", Index: true}
	noArm64 := &policy.Report{ScannedAt: now, Index: true, IndexPlatforms: []string{"linux/amd64", "linux/s390x"}}
	arm32 := &policy.Report{ScannedAt: now, Index: true, IndexPlatforms: []string{"linux/amd64", "linux/arm/v7"}}
	manifest := &policy.Report{ScannedAt: now}
	arm64 := &corev1.PodSpec{NodeSelector: map[string]string{corev1.LabelArchStable: "arm64"}}
	mixed := []string{"", "linux/arm64", "windows/amd64"}
	noCriticalDeny := []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, noCritical)}
	tests := map[string]struct {
		policies    []*workload.Policy
		images      []string
		spec        *corev1.PodSpec
		nodes       []string
		wantAllowed bool
		wantMessage string
		wantWarning string
		unscanned   int
		// queued are the platforms of the unscanned images, when set.
		queued []string
	}{
		"a pod that may run anywhere, an index scanned on amd64 only, arm64 nodes: unscanned for arm64": {
			policies: noCriticalDeny, images: []string{"registry.example.com/amd64-only:1"}, nodes: mixed,
			wantMessage: "not scanned yet for linux/arm64, windows/amd64", unscanned: 2, queued: []string{"linux/arm64", "windows/amd64"},
		},
		"a pod that may run anywhere, an index scanned on both, arm64 nodes: judged": {
			policies: noCriticalDeny, images: []string{"registry.example.com/both:1"}, nodes: []string{"", "linux/arm64"}, wantAllowed: true,
		},
		"a pod that may run anywhere, an index scanned on arm64 only: unscanned for the default platform": {
			policies: noCriticalDeny, images: []string{"registry.example.com/arm64-only:1"}, nodes: mixed,
			wantMessage: "not scanned yet for linux/amd64, windows/amd64", unscanned: 2, queued: []string{"", "windows/amd64"},
		},
		"an index with no image for a node's platform is not asked for one": {
			policies: noCriticalDeny, images: []string{"registry.example.com/no-arm64:1"}, nodes: mixed, wantAllowed: true,
		},
		"an index with no image for the platform a pod asks for: it cannot run there": {
			policies: noCriticalDeny, images: []string{"registry.example.com/no-arm64:1"}, spec: arm64, wantAllowed: true,
		},
		"an index with an image for the arm nodes (a variant) is asked for its report": {
			policies: noCriticalDeny, images: []string{"registry.example.com/arm32:1"}, nodes: []string{"", "linux/arm"},
			wantMessage: "not scanned yet for linux/arm", unscanned: 1, queued: []string{"linux/arm"},
		},
		"an arm64 node runs an index's arm/v7 image, as containerd chooses: asked for": {
			policies: noCriticalDeny, images: []string{"registry.example.com/arm32:1"}, nodes: mixed,
			wantMessage: "not scanned yet for linux/arm64", unscanned: 1, queued: []string{"linux/arm64"},
		},
		"no node yet (scaled to zero): every Linux platform of the index": {
			policies: noCriticalDeny, images: []string{"registry.example.com/arm32:1"}, nodes: []string{},
			wantMessage: "not scanned yet for linux/arm", unscanned: 1, queued: []string{"linux/arm"},
		},
		"a node whose platform is not known yet: every Linux platform of the index": {
			policies: noCriticalDeny, images: []string{"registry.example.com/arm32:1"}, nodes: []string{"", UnknownPlatform},
			wantMessage: "not scanned yet for linux/arm", unscanned: 1, queued: []string{"linux/arm"},
		},
		"an image manifest is one image on every node": {
			policies: noCriticalDeny, images: []string{"registry.example.com/manifest:1"}, nodes: mixed, wantAllowed: true,
		},
		"an image manifest is one image on the platform a pod asks for": {
			policies: noCriticalDeny, images: []string{"registry.example.com/manifest:1"}, spec: arm64, wantAllowed: true,
		},
		"a gap on another platform does not hide known findings": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, noCritical)},
			images:   []string{"registry.example.com/critical-index:1"}, nodes: mixed, wantMessage: "1 critical (max 0)", unscanned: 2,
		},
		"a partial report is unscanned: denied": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, noCritical)},
			images:   []string{"registry.example.com/partial:1"}, wantMessage: "not scanned yet in full: its Java archives were not analysed yet", unscanned: 1,
		},
		"a partial report is unscanned: allowed": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, noCritical)},
			images:   []string{"registry.example.com/partial:1"}, wantAllowed: true, unscanned: 1,
		},
		"a partial report's known findings refuse": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, noCritical)},
			images:   []string{"registry.example.com/partial-critical:1"}, wantMessage: "1 critical (max 0)", unscanned: 1,
		},
		"a pod asking for arm64, scanned on amd64 only, is unscanned": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, noCritical)},
			images:   []string{"registry.example.com/amd64-only:1"}, spec: arm64, wantMessage: "not scanned yet for linux/arm64", unscanned: 1,
		},
		"a pod asking for arm64, scanned on arm64, is judged": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, noCritical)},
			images:   []string{"registry.example.com/both:1"}, spec: arm64, wantAllowed: true,
		},
		"enforce denies an untrusted registry": {
			policies: []*workload.Policy{compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, trusted)},
			// Refused on the reference alone: nothing is looked up, nothing is to be scanned.
			images: []string{"evil.io/app:1"}, wantMessage: "ClusterImagePolicy/trusted: evil.io/app:1: registries",
		},
		"enforce admits a trusted, clean image": {
			policies: []*workload.Policy{compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, trusted)},
			images:   []string{"registry.example.com/clean:1"}, wantAllowed: true,
		},
		"warn admits with a warning": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementWarn, securityv1alpha1.UnscannedAllow, noCritical)},
			images:   []string{"registry.example.com/critical:1"}, wantAllowed: true, wantWarning: "registry.example.com/critical:1: vulnerabilities: 1 critical (max 0)",
		},
		"audit admits silently": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementAudit, securityv1alpha1.UnscannedAllow, noCritical)},
			images:   []string{"registry.example.com/critical:1"}, wantAllowed: true,
		},
		"unscanned, allowed": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, noCritical)},
			images:   []string{"registry.example.com/new:1"}, wantAllowed: true, unscanned: 1,
		},
		"unscanned, denied": {
			policies: []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, noCritical)},
			images:   []string{"registry.example.com/new:1"}, wantMessage: "not scanned yet", unscanned: 1,
		},
		"a malformed reference": {
			policies: []*workload.Policy{}, images: []string{"UPPER/Case::"}, wantMessage: "malformed image reference",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			s := state{policies: tt.policies, reports: map[string]*policy.Report{
				"registry.example.com/critical": critical, "registry.example.com/clean": clean,
				"registry.example.com/partial": partial, "registry.example.com/partial-critical": partialCritical,
				"registry.example.com/amd64-only": amd64Only, "registry.example.com/both": both,
				"registry.example.com/arm64-only": arm64Only, "registry.example.com/no-arm64": noArm64,
				"registry.example.com/manifest": manifest, "registry.example.com/arm32": arm32,
				"registry.example.com/critical-index": {ScannedAt: now, Index: true, Summary: securityv1alpha1.VulnerabilitySummary{Critical: 1, Total: 1}},
			}, nodes: tt.nodes}
			var containers []workload.Container
			for _, img := range tt.images {
				containers = append(containers, workload.Container{Name: "app", Image: img, Type: workload.RegularContainer})
			}
			d, err := Decide(context.Background(), s, Request{Namespace: "shop", Containers: containers, PodSpec: tt.spec}, now)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(d.Allowed).To(Equal(tt.wantAllowed), d.Message)
			if tt.spec != nil && tt.unscanned > 0 {
				g.Expect(d.Unscanned[0].Platform).To(Equal("linux/arm64"), "the queued scan makes the arm64 report")
			}
			if tt.queued != nil {
				var platforms []string
				for _, u := range d.Unscanned {
					platforms = append(platforms, u.Platform)
				}
				g.Expect(platforms).To(Equal(tt.queued))
				g.Expect(d.PlatformGaps).To(HaveLen(len(tt.queued)))
			}
			g.Expect(d.Message).To(ContainSubstring(tt.wantMessage))
			if tt.wantWarning != "" {
				g.Expect(d.Warnings).To(ContainElement(ContainSubstring(tt.wantWarning)))
			}
			g.Expect(d.Unscanned).To(HaveLen(tt.unscanned))
		})
	}
}

func TestImageReviewHandler(t *testing.T) {
	trusted := securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}}}
	queued := &queue{}
	h := &ImageReviewHandler{Reviewer: &Reviewer{
		State: state{policies: []*workload.Policy{compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, trusted)}},
		Clock: clocktesting.NewFakePassiveClock(now), Queue: queued,
	}}
	review := func(images ...string) string { return imageReview("shop", images...) }
	tests := map[string]struct {
		method, body string
		wantCode     int
		wantAllowed  bool
		wantText     string
	}{
		"a trusted image":    {method: http.MethodPost, body: review("registry.example.com/app:1"), wantCode: 200, wantAllowed: true},
		"an untrusted image": {method: http.MethodPost, body: review("registry.example.com/app:1", "evil.io/xx:1"), wantCode: 200, wantText: "evil.io/xx:1: registries"},
		"malformed JSON":     {method: http.MethodPost, body: `{"apiVersion": `, wantCode: 400, wantText: "not a JSON ImageReview"},
		"the wrong kind":     {method: http.MethodPost, body: `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, wantCode: 400, wantText: "expected an imagepolicy.k8s.io/v1alpha1 ImageReview"},
		// Refused in an answer the plugin reads: its defaultAllow does not decide what ImageGuard
		// could not read.
		"an oversized body": {method: http.MethodPost, body: `{"x":"` + strings.Repeat("a", MaxRequestBytes) + `"}`, wantCode: 200, wantText: "larger than"},
		"a GET":             {method: http.MethodGet, wantCode: 405, wantText: "use POST"},
		// The namespace label opts out of the validating webhook only: no API object turns this
		// check off (docs/admission.md).
		"an opted-out namespace": {method: http.MethodPost, body: imageReview("opted-out", "evil.io/xx:1"), wantCode: 200, wantText: "evil.io/xx:1: registries"},
		"no namespace":           {method: http.MethodPost, body: imageReview("", "registry.example.com/app:1"), wantCode: 400, wantText: "names no namespace"},
		"kube-system":            {method: http.MethodPost, body: imageReview("kube-system", "evil.io/xx:1"), wantCode: 200, wantAllowed: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, "/imagepolicy", strings.NewReader(tt.body)))
			g.Expect(rec.Code).To(Equal(tt.wantCode))
			g.Expect(rec.Header().Get("Content-Type")).To(Equal("application/json"))
			g.Expect(rec.Body.String()).To(ContainSubstring(tt.wantText))
			if tt.wantCode == 200 {
				out := imagepolicyv1alpha1.ImageReview{}
				g.Expect(json.Unmarshal(rec.Body.Bytes(), &out)).To(Succeed())
				g.Expect(out.Status.Allowed).To(Equal(tt.wantAllowed))
				if !strings.Contains(tt.body, `"shop"`) {
					return
				}
				g.Expect(out.Status.AuditAnnotations).To(HaveKey("ClusterImagePolicy.trusted"))
			}
		})
	}
	g := NewWithT(t)
	// Only the admitted review queues its unscanned image: a refused one makes ImageGuard pull
	// nothing; exempt namespaces queue nothing.
	// An ImageReview says neither whether it is a dry run nor whether the pod will be made at all:
	// none queues a scan (the validating webhook and the pod controller do).
	g.Expect(queued.images).To(BeEmpty())
}

// An ImageReview queues the report of a scanned index digest's other platform, which nothing else
// would make (no pod runs it until admitted), and nothing else: not an image never scanned.
func TestImageReviewQueuesOnlyPlatformGaps(t *testing.T) {
	g := NewWithT(t)
	queued := &queue{}
	noCritical := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}
	h := &ImageReviewHandler{Reviewer: &Reviewer{
		State: state{
			policies: []*workload.Policy{compiled(t, "ClusterImagePolicy/scanned", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, noCritical)},
			reports:  map[string]*policy.Report{"registry.example.com/index": {ScannedAt: now, Index: true, Repository: "registry.example.com/index", Namespace: "shop"}},
			nodes:    []string{"", "linux/arm64"},
		},
		Clock: clocktesting.NewFakePassiveClock(now), Queue: queued,
	}}
	index := "registry.example.com/index@sha256:" + strings.Repeat("a", 64)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/imagepolicy", strings.NewReader(imageReview("shop", index, "registry.example.com/new@sha256:"+strings.Repeat("b", 64)))))
	out := imagepolicyv1alpha1.ImageReview{}
	g.Expect(json.Unmarshal(rec.Body.Bytes(), &out)).To(Succeed())
	g.Expect(out.Status.Allowed).To(BeFalse())
	g.Expect(out.Status.Reason).To(And(ContainSubstring(index+": not scanned yet for linux/arm64"), ContainSubstring("new@sha256:"+strings.Repeat("b", 64)+": not scanned yet (")))
	g.Expect(queued.images).To(Equal([]string{index}))
	g.Expect(queued.platforms).To(Equal([]string{"linux/arm64"}))

	// A review naming another host for the digest queues it from the repository it was
	// scanned from: ImageGuard pulls from no host a review names.
	queued.images, queued.platforms = nil, nil
	h.Reviewer.State = state{policies: h.Reviewer.State.(state).policies, nodes: []string{"", "linux/arm64"}, reports: map[string]*policy.Report{
		"evil.example/copy": {ScannedAt: now, Index: true, Repository: "registry.example.com/index", Namespace: "shop"}}}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/imagepolicy", strings.NewReader(imageReview("shop", "evil.example/copy:1@sha256:"+strings.Repeat("a", 64)))))
	g.Expect(rec.Code).To(Equal(http.StatusOK))
	g.Expect(queued.images).To(Equal([]string{index}))
	// Nor another namespace's image: a review in "other" queues nothing of shop's.
	queued.images = nil
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/imagepolicy", strings.NewReader(imageReview("other", "evil.example/copy:1@sha256:"+strings.Repeat("a", 64)))))
	g.Expect(rec.Code).To(Equal(http.StatusOK))
	g.Expect(queued.images).To(BeEmpty())

	// The nodes cannot be read: the decision fails, as the failure policy says (Fail here).
	h.Reviewer.State = state{policies: h.Reviewer.State.(state).policies, nodesErr: errors.New("cache not synced"), reports: map[string]*policy.Report{
		"registry.example.com/index": {ScannedAt: now, Index: true, Repository: "registry.example.com/index", Namespace: "shop"}}}
	d, err := h.Reviewer.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "shop",
		Containers: []workload.Container{{Name: "app", Image: index, Type: workload.RegularContainer}}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeFalse())
	g.Expect(d.Message).To(ContainSubstring("cache not synced"))
}

func imageReview(namespace string, images ...string) string {
	r := imagepolicyv1alpha1.ImageReview{}
	r.APIVersion, r.Kind = "imagepolicy.k8s.io/v1alpha1", "ImageReview"
	r.Spec.Namespace = namespace
	for _, img := range images {
		r.Spec.Containers = append(r.Spec.Containers, imagepolicyv1alpha1.ImageReviewContainerSpec{Image: img})
	}
	raw, _ := json.Marshal(r)
	return string(raw)
}

// TestLookupsOnlyWhereTheDecisionNeedsThem: a request the registry rule refuses asks no registry;
// otherwise only tag references a report-judging, non-Audit policy matches are looked up.
func TestLookupsOnlyWhereTheDecisionNeedsThem(t *testing.T) {
	trusted := securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}}}
	noCritical := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}
	tests := map[string]struct {
		policies     []*workload.Policy
		images       []string
		wantResolved []string
		wantAllowed  bool
	}{
		"refused by registry first": {
			policies: []*workload.Policy{
				compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, trusted),
				compiled(t, "ClusterImagePolicy/no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, noCritical),
			},
			images: []string{"registry.example.com/app-a:1", "hung.example.com/app-b:1", "hung.example.com/app-c:1"},
		},
		"only what a report rule judges": {
			policies: []*workload.Policy{
				compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, trusted),
				compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementWarn, securityv1alpha1.UnscannedAllow, noCritical),
			},
			images:       []string{"registry.example.com/app-a:1", "registry.example.com/app-b@" + digest},
			wantResolved: []string{"registry.example.com/app-a:1"}, wantAllowed: true,
		},
		"an Audit policy needs no lookup": {
			policies:    []*workload.Policy{compiled(t, "ImagePolicy/shop/no-critical", securityv1alpha1.EnforcementAudit, securityv1alpha1.UnscannedAllow, noCritical)},
			images:      []string{"registry.example.com/app-a:1"},
			wantAllowed: true,
		},
		"registries only need no lookup": {
			policies:    []*workload.Policy{compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, trusted)},
			images:      []string{"registry.example.com/app-a:1"},
			wantAllowed: true,
		},
		"onUnscanned Deny needs the digest": {
			policies:     []*workload.Policy{compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, trusted)},
			images:       []string{"registry.example.com/app-a:1"},
			wantResolved: []string{"registry.example.com/app-a:1"},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			var resolved []string
			s := state{policies: tt.policies, resolved: &resolved}
			var containers []workload.Container
			for i, img := range tt.images {
				containers = append(containers, workload.Container{Name: fmt.Sprint("c", i), Image: img, Type: workload.RegularContainer})
			}
			d, err := Decide(context.Background(), s, Request{Namespace: "shop", Containers: containers}, now)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(d.Allowed).To(Equal(tt.wantAllowed), d.Message)
			g.Expect(resolved).To(Equal(tt.wantResolved))
		})
	}
}

// TestInternalErrorsFollowTheFailurePolicy: Ignore admits with a Warning naming the error, Fail
// refuses with it; a request without namespace is a bad request either way.
func TestInternalErrorsFollowTheFailurePolicy(t *testing.T) {
	broken := state{err: errors.New("reading namespace shop: not found in the cache")}
	containers := []workload.Container{{Name: "app", Image: "registry.example.com/app-a:1", Type: workload.RegularContainer}}
	for _, tt := range []struct {
		policy      FailurePolicy
		wantAllowed bool
	}{{FailureIgnore, true}, {FailureFail, false}} {
		t.Run(string(tt.policy), func(t *testing.T) {
			g := NewWithT(t)
			r := &Reviewer{State: broken, FailurePolicy: tt.policy, Clock: clocktesting.NewFakePassiveClock(now)}
			d, err := r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "shop", Containers: containers})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(d.Allowed).To(Equal(tt.wantAllowed))
			if tt.wantAllowed {
				g.Expect(d.Warnings).To(ConsistOf(ContainSubstring("not found in the cache")))
			} else {
				g.Expect(d.Message).To(ContainSubstring("not found in the cache"))
			}
			_, err = r.Review(context.Background(), Request{Endpoint: EndpointValidate, Containers: containers})
			g.Expect(err).To(MatchError(ErrBadRequest))
		})
	}
}

// TestRefusedForBeingUnscannedQueuesTheScan: a request refused only because an image is not
// scanned yet queues that scan (else it could never be admitted); refused for anything else, it
// queues nothing.
func TestRefusedForBeingUnscannedQueuesTheScan(t *testing.T) {
	trusted := securityv1alpha1.PolicyRules{
		Registries:      &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}},
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
	}
	critical := &policy.Report{ScannedAt: now, Summary: securityv1alpha1.VulnerabilitySummary{Critical: 1, Total: 1}}
	for _, tt := range []struct {
		name       string
		images     []string
		wantQueued []string
	}{
		{"only unscanned", []string{"registry.example.com/new:1"}, []string{"registry.example.com/new:1"}},
		{"unscanned and a critical", []string{"registry.example.com/new:1", "registry.example.com/critical:1"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			q := &queue{}
			r := &Reviewer{Queue: q, Clock: clocktesting.NewFakePassiveClock(now), State: state{
				policies: []*workload.Policy{compiled(t, "ClusterImagePolicy/scanned", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, trusted)},
				reports:  map[string]*policy.Report{"registry.example.com/critical": critical},
			}}
			var containers []workload.Container
			for i, img := range tt.images {
				containers = append(containers, workload.Container{Name: fmt.Sprint("c", i), Image: img, Type: workload.RegularContainer})
			}
			d, err := r.Review(context.Background(), Request{Endpoint: EndpointValidate, Namespace: "shop", Containers: containers})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(d.Allowed).To(BeFalse())
			g.Expect(q.images).To(Equal(tt.wantQueued))
		})
	}
}

// TestDecideVerifiesAtMost64ImagesPerRequest: a request naming more signed images than one
// request may have verified is refused under Enforce for the rest, never passed.
func TestDecideVerifiesAtMost64ImagesPerRequest(t *testing.T) {
	g := NewWithT(t)
	key := "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEhJ7dxYgvE3kSrxrKMdszwP19Y/Sc\nhaQ36JeeApx/SPmcPHU70x4uQy+p6HIfgQMrW0GNIhxytt2SFs3iH3/pCw==\n-----END PUBLIC KEY-----\n"
	signed := securityv1alpha1.PolicyRules{Signatures: &securityv1alpha1.SignatureRule{Required: true, Keys: []securityv1alpha1.SignatureKey{{PublicKey: key}}}}
	enforce := compiled(t, "ClusterImagePolicy/signed", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, signed)
	verdicts := map[string]map[string]policy.SignatureVerdict{}
	req := Request{Namespace: "shop"}
	for i := range maxSignatureDigests + 1 {
		digest := fmt.Sprintf("sha256:%064x", i+1)
		verdicts[digest] = map[string]policy.SignatureVerdict{enforce.Rules.Signatures().ID: {Verified: true}}
		req.Containers = append(req.Containers, workload.Container{Name: fmt.Sprintf("c%d", i), Image: "registry.example.com/app@" + digest, Type: workload.RegularContainer})
	}
	d, err := Decide(context.Background(), state{policies: []*workload.Policy{enforce}, signatures: verdicts}, req, now)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeFalse())
	g.Expect(strings.Count(d.Message, "signatures not verified in time")).To(Equal(1))
	req.Containers = req.Containers[:maxSignatureDigests]
	d, err = Decide(context.Background(), state{policies: []*workload.Policy{enforce}, signatures: verdicts}, req, now)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeTrue(), d.Message)

	// A thousand containers of one image: one verification, and admitted.
	one := req.Containers[0]
	req.Containers = nil
	for i := range 1000 {
		c := one
		c.Name = fmt.Sprintf("c%d", i)
		req.Containers = append(req.Containers, c)
	}
	calls := &atomic.Int32{}
	d, err = Decide(context.Background(), state{policies: []*workload.Policy{enforce}, signatures: verdicts, verifications: calls}, req, now)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.Allowed).To(BeTrue(), d.Message)
	g.Expect(calls.Load()).To(Equal(int32(1)))
}

// TestDecideSignatures: a verdict decides (a failure names the rule and its reason); an image
// whose signatures are not verified in time is refused under Enforce whatever onUnscanned says
// (a slow registry gets no image past the rule), and warned of under Warn; Audit policies cost no
// verification.
func TestDecideSignatures(t *testing.T) {
	key := "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEhJ7dxYgvE3kSrxrKMdszwP19Y/Sc\nhaQ36JeeApx/SPmcPHU70x4uQy+p6HIfgQMrW0GNIhxytt2SFs3iH3/pCw==\n-----END PUBLIC KEY-----\n"
	signed := securityv1alpha1.PolicyRules{Signatures: &securityv1alpha1.SignatureRule{Required: true, Keys: []securityv1alpha1.SignatureKey{{PublicKey: key}}}}
	enforce := compiled(t, "ClusterImagePolicy/signed", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, signed)
	id := enforce.Rules.Signatures().ID
	const good, bad, slow = "sha256:" + "1111111111111111111111111111111111111111111111111111111111111111",
		"sha256:" + "2222222222222222222222222222222222222222222222222222222222222222",
		"sha256:" + "3333333333333333333333333333333333333333333333333333333333333333"
	verdicts := map[string]map[string]policy.SignatureVerdict{
		good: {id: {Verified: true, SignedBy: []string{"SHA256:x (key #1)"}}},
		bad:  {id: {Reason: securityv1alpha1.ReasonSignatureMissing, Message: "no signature"}},
	}
	tests := map[string]struct {
		policy      *workload.Policy
		digest      string
		image       string // instead of digest
		wantAllowed bool
		wantMessage string
		wantWarning string
	}{
		"signed":   {policy: enforce, digest: good, wantAllowed: true},
		"unsigned": {policy: enforce, digest: bad, wantMessage: "ClusterImagePolicy/signed: registry.example.com/app@" + bad + ": signatures: no signature"},
		"not verified in time, onUnscanned Allow": {policy: enforce, digest: slow, wantMessage: "signatures: signatures not verified in time; verification continues, try again"},
		"not verified in time, onUnscanned Deny":  {policy: compiled(t, "ClusterImagePolicy/signed", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedDeny, signed), digest: slow, wantMessage: "signatures not verified in time"},
		"a tag whose digest is not told in time":  {policy: enforce, image: "registry.example.com/app:1", wantMessage: "signatures not verified in time"},
		"warn: not verified in time, admitted":    {policy: compiled(t, "ClusterImagePolicy/signed", securityv1alpha1.EnforcementWarn, securityv1alpha1.UnscannedAllow, signed), digest: slow, wantAllowed: true, wantWarning: "signatures not verified in time"},
		"audit: unsigned, yet admitted":           {policy: compiled(t, "ClusterImagePolicy/signed", securityv1alpha1.EnforcementAudit, securityv1alpha1.UnscannedDeny, signed), digest: bad, wantAllowed: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			s := state{policies: []*workload.Policy{tt.policy}, signatures: verdicts}
			image := tt.image
			if image == "" {
				image = "registry.example.com/app@" + tt.digest
			}
			req := Request{Namespace: "shop", Containers: []workload.Container{{Name: "app", Image: image, Type: workload.RegularContainer}}}
			d, err := Decide(context.Background(), s, req, now)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(d.Allowed).To(Equal(tt.wantAllowed), d.Message)
			g.Expect(d.Message).To(ContainSubstring(tt.wantMessage))
			if tt.wantWarning != "" {
				g.Expect(d.Warnings).To(ContainElement(ContainSubstring(tt.wantWarning)))
			}
		})
	}
}
