package status_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// TestOldInventoriesAreAnalysedAgain runs an image under `maxAnalysisAge: 48h`: once its inventory
// is a day old it is pulled and analysed again; while its registry fails, the kept inventory
// serves and the rule passes until the inventory is older than the limit: AnalysisTooOld.
func TestOldInventoriesAreAnalysedAgain(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref, imageID, digest := testsuite.Push(t, suite.Registry, "aged/app", testsuite.Image(t.Name()))
	namespace(g, "aged")
	g.Expect(suite.Env.Client.Create(ctx, &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "analysed", Namespace: "aged"},
		Spec: securityv1alpha1.ImagePolicySpec{Rules: securityv1alpha1.PolicyRules{
			Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxAnalysisAge: &metav1.Duration{Duration: 48 * time.Hour}},
		}},
	})).To(Succeed())
	app(g, "aged", "app", ref, imageID)
	rep := readyReport(g, "aged", "aged/app", digest)
	first := rep.Status.LastAnalysisTime.Time
	analyses := suite.Scanner.Analyses()
	verdict := func(g Gomega) (metav1.ConditionStatus, string) {
		p := &securityv1alpha1.ImagePolicy{}
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKey{Namespace: "aged", Name: "analysed"}, p)).To(Succeed())
		c := meta.FindStatusCondition(p.Status.Conditions, securityv1alpha1.ConditionCompliant)
		g.Expect(c).NotTo(BeNil())
		if len(p.Status.NonCompliant) > 0 {
			return c.Status, p.Status.NonCompliant[0].Reason
		}
		return c.Status, ""
	}
	g.Eventually(func(g Gomega) metav1.ConditionStatus { s, _ := verdict(g); return s }).WithTimeout(timeout).Should(Equal(metav1.ConditionTrue))

	// A day later (half the limit) the image is analysed again: pulled once more.
	clk.Step(25 * time.Hour)
	rematched(g, publish(g, dbBuiltNow()))
	g.Eventually(func(g Gomega) {
		rep = readyReport(g, "aged", "aged/app", digest)
		g.Expect(rep.Status.LastAnalysisTime.Time).To(BeTemporally("==", first.Add(25*time.Hour)))
	}).WithTimeout(timeout).Should(Succeed())
	g.Expect(suite.Scanner.Analyses()).To(Equal(analyses + 1))

	// Its registry fails: the kept inventory serves (the report stays Scanned), with an Event,
	// and the rule passes while the inventory is younger than the limit.
	var pulls atomic.Int64
	suite.Registry.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/aged/") {
			return false
		}
		pulls.Add(1)
		return testutil.StatusFault(http.StatusServiceUnavailable)(w, r)
	})
	t.Cleanup(func() { suite.Registry.SetFault(nil) })
	clk.Step(25 * time.Hour)
	rematched(g, publish(g, dbBuiltNow()))
	g.Eventually(func(g Gomega) []string {
		list := &eventsv1.EventList{}
		g.Expect(suite.Env.Client.List(ctx, list, client.InNamespace("aged"))).To(Succeed())
		var reasons []string
		for _, e := range list.Items {
			reasons = append(reasons, e.Reason)
		}
		return reasons
	}).WithTimeout(timeout).Should(ContainElement(securityv1alpha1.ReasonReanalysisFailed))
	rep = readyReport(g, "aged", "aged/app", digest)
	g.Expect(meta.IsStatusConditionTrue(rep.Status.Conditions, securityv1alpha1.ConditionScanned)).To(BeTrue())
	// A failed re-analysis is not tried again for 5 minutes, however often the report is visited.
	tried := pulls.Load()
	g.Expect(tried).To(BeNumerically(">", 0))
	clk.Step(time.Minute)
	rematched(g, publish(g, dbBuiltNow()))
	g.Consistently(pulls.Load).WithTimeout(2 * time.Second).Should(Equal(tried))
	g.Expect(rep.Status.LastAnalysisTime.Time).To(BeTemporally("==", first.Add(25*time.Hour)))
	g.Consistently(func(g Gomega) metav1.ConditionStatus { s, _ := verdict(g); return s }).WithTimeout(2 * time.Second).Should(Equal(metav1.ConditionTrue))

	// Past the limit with the registry still failing: AnalysisTooOld.
	clk.Step(24 * time.Hour)
	rematched(g, publish(g, dbBuiltNow()))
	g.Eventually(func(g Gomega) {
		s, reason := verdict(g)
		g.Expect(s).To(Equal(metav1.ConditionFalse))
		g.Expect(reason).To(Equal(policy.ReasonAnalysisTooOld))
	}).WithTimeout(timeout).Should(Succeed())
	g.Expect(pulls.Load()).To(BeNumerically(">", tried), "tried again once the wait was over")
}

// TestAnalysisAgeHasAFloor: each re-analysis pulls the image again, so the API refuses a limit
// under an hour.
func TestAnalysisAgeHasAFloor(t *testing.T) {
	g := NewWithT(t)
	err := suite.Env.Client.Create(context.Background(), &securityv1alpha1.ClusterImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "pull-all-the-time"},
		Spec: securityv1alpha1.ClusterImagePolicySpec{Rules: securityv1alpha1.PolicyRules{
			Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxAnalysisAge: &metav1.Duration{Duration: 30 * time.Minute}},
		}},
	})
	g.Expect(err).To(MatchError(ContainSubstring("maxAnalysisAge must be at least 1h")))
}
