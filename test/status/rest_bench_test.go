package status_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/testsuite"
)

// BenchmarkWritesAtRest measures the API writes of 1,000 reports (20 digests in 50 namespaces,
// each under a maxScanAge policy) over 48 hours of a moved clock in which only the DB changes, a
// new one every 6 hours, and prints them per hour. It runs once whatever b.N is:
//
//	KUBEBUILDER_ASSETS=$(hack/control-plane.sh) GOEXPERIMENT=jsonv2 \
//	  go test ./test/status -run '^$' -bench WritesAtRest -benchtime 1x
func BenchmarkWritesAtRest(b *testing.B) {
	const namespaces, digests, hours = 50, 20, 48
	g := NewWithT(b)
	ctx := context.Background()
	cfg := rest.CopyConfig(suite.Env.Config)
	cfg.QPS, cfg.Burst = 500, 1000
	c, err := client.New(cfg, client.Options{Scheme: suite.Env.Client.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())
	refs, ids := make([]string, digests), make([]string, digests)
	for i := range digests {
		refs[i], ids[i], _ = testsuite.Push(b, suite.Registry, fmt.Sprintf("rest/app-%02d", i), testsuite.Image(fmt.Sprintf("rest-%d", i)))
	}
	for n := range namespaces {
		ns := fmt.Sprintf("rest-%02d", n)
		g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		g.Expect(c.Create(ctx, &securityv1alpha1.ImagePolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "fresh", Namespace: ns},
			Spec: securityv1alpha1.ImagePolicySpec{Rules: securityv1alpha1.PolicyRules{
				Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxScanAge: &metav1.Duration{Duration: 24 * time.Hour}},
			}},
		})).To(Succeed())
		for d := range digests {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app-%02d", d), Namespace: ns},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: refs[d]}}},
			}
			g.Expect(c.Create(ctx, pod)).To(Succeed())
			pod.Status.Phase = corev1.PodRunning
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: refs[d], ImageID: ids[d]}}
			g.Expect(c.Status().Update(ctx, pod)).To(Succeed())
		}
	}
	want := namespaces * digests
	g.Eventually(func(g Gomega) int {
		list := &securityv1alpha1.ImageScanReportList{}
		g.Expect(c.List(ctx, list)).To(Succeed())
		n := 0
		for _, r := range list.Items {
			if strings.HasPrefix(r.Namespace, "rest-") && meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady) && len(r.Status.Workloads) > 0 {
				n++
			}
		}
		return n
	}).WithTimeout(10 * time.Minute).WithPolling(time.Second).Should(Equal(want))
	time.Sleep(5 * time.Second) // the last policy and policy report writes of the set-up

	resources := []string{"imagescanreports", "vulnerabilitydatabases", "imagepolicies", "policyreports", "reports"}
	writes := func() map[string]float64 {
		out := map[string]float64{}
		for _, r := range resources {
			n, _, err := testsuite.APIWrites(suite.Env.Config, r)
			g.Expect(err).NotTo(HaveOccurred())
			out[r] = n
		}
		return out
	}
	before := writes()
	start := time.Now()
	for range hours / 6 {
		clk.Step(6 * time.Hour)
		rematched(g, publish(g, dbBuiltNow()))
	}
	time.Sleep(5 * time.Second)
	after := writes()
	b.ReportMetric(float64(want), "reports")
	for _, r := range resources {
		b.ReportMetric((after[r]-before[r])/hours, r+"-writes/h")
	}
	b.ReportMetric(time.Since(start).Seconds()/(hours/6), "s-per-rematch")
}
