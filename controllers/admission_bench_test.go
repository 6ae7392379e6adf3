package controllers_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// BenchmarkAdmissionLoad sends AdmissionReviews of Deployments to the running webhook server
// over loopback HTTPS at a fixed 200 requests/s (open loop: a slow answer does not slow the
// sender) for IMAGEGUARD_BENCH_DURATION (default 30s), and reports latency percentiles. Every
// decision is answered from the cache: the images are scanned before the load starts. Run with
// -benchtime=1x.
func BenchmarkAdmissionLoad(b *testing.B) {
	g := NewWithT(b)
	duration := 30 * time.Second
	if d, err := time.ParseDuration(os.Getenv("IMAGEGUARD_BENCH_DURATION")); err == nil {
		duration = d
	}
	const rate = 200
	ns := "adm-bench"
	admissionNamespace(g, ns)
	ref, _, digest := testsuite.Push(b, reg, "adm/bench", testsuite.Image("adm-bench"))
	imagePolicy(g, ns, "enforce", securityv1alpha1.EnforcementEnforce, securityv1alpha1.PolicyRules{
		Registries:      &securityv1alpha1.RegistryRule{Allowed: []string{reg.Host() + "/**"}},
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](5)},
	})
	imagePolicy(g, ns, "warn", securityv1alpha1.EnforcementWarn, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxHigh: ptr.To[int32](0)},
	})
	// Scanned before the load: admit once (queues the scan), wait for the report.
	_, stderr, err := kubectlApply(deploymentYAML(ns, "warm", ref))
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	readyReport(g, ns, "adm/bench", digest)

	byDigest := reg.Host() + "/adm/bench@" + digest
	allowed := review(b, ns, byDigest, ref)                           // a digest and a tag: admitted with a warning
	denied := review(b, ns, byDigest, "evil.example.com/app@"+digest) // an untrusted registry: refused
	client := webhookClient(b)
	url := suite.WebhookURL(admission.ValidatePath)
	// One request of each first, so the tag's digest is resolved and cached before timing.
	for _, body := range [][]byte{allowed, denied} {
		_, err := send(client, url, body, nil)
		g.Expect(err).NotTo(HaveOccurred())
	}

	for b.Loop() {
		openLoad(b, client, url, duration, rate, func(i int) ([]byte, bool) {
			if i%2 == 1 {
				return denied, false
			}
			return allowed, true
		})
	}
}

// BenchmarkAdmissionLoadSignatures is BenchmarkAdmissionLoad with a third policy, Enforce,
// requiring a signature by a key: the image is signed (cosign's signature tag) and its verdict is
// kept after the first request, whose latency (a cold verification: material, registry reads,
// sigstore-go) it reports as cold-verify-ms.
func BenchmarkAdmissionLoadSignatures(b *testing.B) {
	g := NewWithT(b)
	duration := 30 * time.Second
	if d, err := time.ParseDuration(os.Getenv("IMAGEGUARD_BENCH_DURATION")); err == nil {
		duration = d
	}
	const rate = 200
	ns := "adm-bench-sig"
	admissionNamespace(g, ns)
	ref, _, digest := testsuite.Push(b, reg, "adm/signed", testsuite.Image("adm-bench-sig"))
	key := testutil.NewSigningKey(b)
	h, err := v1.NewHash(digest)
	g.Expect(err).NotTo(HaveOccurred())
	reg.PushTagSignatures(b, "adm/signed", h, key.KeyTagSignature(b, reg.Host()+"/adm/signed", h))
	imagePolicy(g, ns, "enforce", securityv1alpha1.EnforcementEnforce, securityv1alpha1.PolicyRules{
		Registries:      &securityv1alpha1.RegistryRule{Allowed: []string{reg.Host() + "/**"}},
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](5)},
	})
	imagePolicy(g, ns, "warn", securityv1alpha1.EnforcementWarn, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxHigh: ptr.To[int32](0)},
	})
	imagePolicy(g, ns, "signed", securityv1alpha1.EnforcementEnforce, securityv1alpha1.PolicyRules{
		Signatures: &securityv1alpha1.SignatureRule{Required: true, Keys: []securityv1alpha1.SignatureKey{{PublicKey: key.PublicPEM}}},
	})
	byDigest := reg.Host() + "/adm/signed@" + digest
	allowed := review(b, ns, byDigest)
	denied := review(b, ns, byDigest, "evil.example.com/app@"+digest)
	client := webhookClient(b)
	url := suite.WebhookURL(admission.ValidatePath)
	start := time.Now()
	yes := true
	_, err = send(client, url, allowed, &yes)
	g.Expect(err).NotTo(HaveOccurred())
	cold := time.Since(start)
	_, stderr, err := kubectlApply(deploymentYAML(ns, "warm", ref))
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	readyReport(g, ns, "adm/signed", digest)

	for b.Loop() {
		openLoad(b, client, url, duration, rate, func(i int) ([]byte, bool) {
			if i%2 == 1 {
				return denied, false
			}
			return allowed, true
		})
	}
	b.ReportMetric(float64(cold.Microseconds())/1000, "cold-verify-ms")
}

// BenchmarkAdmissionLoadHungRegistry sends, at 200 requests/s for IMAGEGUARD_BENCH_DURATION,
// AdmissionReviews of Deployments whose one container is a tag (a new one each request, so no
// answer is cached) on a registry that accepts connections and never answers, under an Enforce
// policy with onUnscanned: Deny. Every request must be refused within the decision budget (3s):
// none may be admitted because the clock ran out, and p99 must stay within the budget.
func BenchmarkAdmissionLoadHungRegistry(b *testing.B) {
	g := NewWithT(b)
	duration := 30 * time.Second
	if d, err := time.ParseDuration(os.Getenv("IMAGEGUARD_BENCH_DURATION")); err == nil {
		duration = d
	}
	const rate = 200
	ns := "adm-bench-hung"
	admissionNamespace(g, ns)
	imagePolicy(g, ns, "scanned-only", securityv1alpha1.EnforcementEnforce, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		OnUnscanned:     securityv1alpha1.UnscannedDeny,
	})
	hung := silentRegistry(b)
	client := webhookClient(b)
	url := suite.WebhookURL(admission.ValidatePath)
	for b.Loop() {
		openLoad(b, client, url, duration, rate, func(i int) ([]byte, bool) {
			return review(b, ns, fmt.Sprintf("%s/team/app-%d:1", hung, i)), false
		})
	}
}

// openLoad sends rate requests per second for duration (open loop: a slow answer does not slow
// the sender), request i being body(i) with the answer it must get, and reports the latency
// percentiles. A request answered otherwise is an error: the benchmark fails.
func openLoad(b *testing.B, client *http.Client, url string, duration time.Duration, rate int, body func(int) ([]byte, bool)) {
	var mu sync.Mutex
	var latencies []time.Duration
	var errs []error
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	end := time.Now().Add(duration)
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		req, wantAllowed := body(i)
		wg.Go(func() {
			start := time.Now()
			_, err := send(client, url, req, &wantAllowed)
			elapsed := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			latencies = append(latencies, elapsed)
		})
	}
	tick.Stop()
	wg.Wait()
	if len(latencies) == 0 {
		b.Fatalf("no request answered; first error: %v", errs[0])
	}
	slices.Sort(latencies)
	pct := func(p float64) time.Duration { return latencies[int(float64(len(latencies)-1)*p)] }
	b.ReportMetric(float64(len(latencies)+len(errs)), "requests")
	b.ReportMetric(float64(len(errs)), "errors")
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(latencies[len(latencies)-1].Microseconds())/1000, "max-ms")
	b.Logf("%d requests in %s at %d/s: p50 %s, p99 %s, max %s, %d errors; p99 is %.4f%% of the API server's 10s webhook timeout",
		len(latencies)+len(errs), duration, rate, pct(0.50), pct(0.99), latencies[len(latencies)-1], len(errs),
		100*pct(0.99).Seconds()/10)
	if len(errs) > 0 {
		b.Fatalf("%d requests failed or were answered wrongly, first: %v", len(errs), errs[0])
	}
}

// review returns an AdmissionReview creating a Deployment with the images.
func review(b *testing.B, ns string, images ...string) []byte {
	d := &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "bench", Namespace: ns, Labels: map[string]string{"app": "bench"}}}
	for i, img := range images {
		d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img})
	}
	raw, err := json.Marshal(d)
	if err != nil {
		b.Fatal(err)
	}
	r := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID("bench"), Kind: metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"},
			Resource:  metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"},
			Namespace: ns, Name: "bench", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	}
	out, err := json.Marshal(r)
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// webhookClient calls the webhook server as the API server does: trusting its CA, presenting
// the client certificate the server requires.
func webhookClient(b *testing.B) *http.Client {
	c, err := suite.WebhookClient(false)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// send posts one review and checks the answer (against wantAllowed when given).
func send(c *http.Client, url string, body []byte, wantAllowed *bool) (*admissionv1.AdmissionReview, error) {
	out, err := testsuite.PostReview(c, url, body)
	if err != nil {
		return nil, err
	}
	if wantAllowed != nil && out.Response.Allowed != *wantAllowed {
		return nil, fmt.Errorf("allowed %v, want %v: %+v", out.Response.Allowed, *wantAllowed, out.Response.Result)
	}
	return out, nil
}
