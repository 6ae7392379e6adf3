package status_test

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// TestNewCriticalIsToldOnce publishes a DB that adds one critical to one image of two: that
// report says what changed, one NewVulnerabilities Event each goes to it and to its Deployment,
// the counter moves by one; the other report is not written.
func TestNewCriticalIsToldOnce(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	refA, idA, digestA := testsuite.Push(t, suite.Registry, "news/zlib", testsuite.Image(t.Name()+"a", testutil.APKPackage{Name: "zlib", Version: "1.3.1-r2"}))
	refB, idB, digestB := testsuite.Push(t, suite.Registry, "news/plain", testsuite.Image(t.Name()+"b"))
	namespace(g, "news")
	app(g, "news", "with-zlib", refA, idA)
	app(g, "news", "plain", refB, idB)
	a := readyReport(g, "news", "news/zlib", digestA)
	b := readyReport(g, "news", "news/plain", digestB)
	g.Expect(a.Status.Changes).To(BeNil(), "a first scan changes nothing")
	writes := countWrites(t, g, "news")
	critical := metrics.NewVulnerabilities.WithLabelValues("critical")
	before := promtestutil.ToFloat64(critical)

	digest := publish(g, dbBuiltNow(testutil.AdvisorySpec{
		ID: "CVE-2026-7777", Ecosystem: "alpine 3.22", Package: "zlib", FixedVersion: "1.3.2-r0", Severity: "CRITICAL",
	}))
	rematched(g, digest)
	g.Eventually(func(g Gomega) {
		a = readyReport(g, "news", "news/zlib", digestA)
		g.Expect(a.Status.Changes).NotTo(BeNil())
		g.Expect(a.Status.Changes.New).To(BeEquivalentTo(1))
		g.Expect(a.Status.Changes.Fixed).To(BeEquivalentTo(0))
		g.Expect(a.Status.Changes.NewIDs).To(Equal([]string{"CVE-2026-7777"}))
		g.Expect(a.Status.Changes.VulnerabilityDB).To(Equal(digest))
		g.Expect(a.Status.Summary.Critical).To(BeEquivalentTo(2))
	}).WithTimeout(timeout).Should(Succeed())
	g.Expect(promtestutil.ToFloat64(critical) - before).To(Equal(1.0))

	told := func(g Gomega) map[string]int {
		list := &eventsv1.EventList{}
		g.Expect(suite.Env.Client.List(ctx, list, client.InNamespace("news"))).To(Succeed())
		out := map[string]int{}
		for _, e := range list.Items {
			if e.Reason == securityv1alpha1.ReasonNewVulnerabilities {
				g.Expect(e.Note).To(ContainSubstring("CVE-2026-7777"))
				out[e.Regarding.Kind+"/"+e.Regarding.Name] += int(max(e.DeprecatedCount, 1))
			}
		}
		return out
	}
	want := map[string]int{"ImageScanReport/" + a.Name: 1, "Deployment/with-zlib": 1}
	g.Eventually(told).WithTimeout(timeout).Should(Equal(want))
	g.Consistently(told).WithTimeout(2 * time.Second).Should(Equal(want))
	// The other report's findings did not change: not written.
	g.Expect(writes.of(b.Name)).To(BeZero())
	g.Expect(writes.of(a.Name)).To(Equal(1))

	// The same advisories again (built a minute later: another digest) change nothing and tell
	// nothing.
	clk.Step(time.Minute)
	rematched(g, publish(g, dbBuiltNow(testutil.AdvisorySpec{
		ID: "CVE-2026-7777", Ecosystem: "alpine 3.22", Package: "zlib", FixedVersion: "1.3.2-r0", Severity: "CRITICAL",
	})))
	g.Consistently(told).WithTimeout(2 * time.Second).Should(Equal(want))
	g.Expect(promtestutil.ToFloat64(critical) - before).To(Equal(1.0))
	g.Expect(writes.total()).To(Equal(1))
}
