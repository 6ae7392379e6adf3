package status_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/testsuite"
)

// kstatusOfDB reads the VulnerabilityDatabase as a GitOps tool would and computes its kstatus.
func kstatusOfDB(g Gomega) *status.Result {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(securityv1alpha1.GroupVersion.WithKind("VulnerabilityDatabase"))
	g.Expect(suite.Env.Client.Get(context.Background(), client.ObjectKey{Name: securityv1alpha1.VulnerabilityDatabaseName}, u)).To(Succeed())
	res, err := status.Compute(u)
	g.Expect(err).NotTo(HaveOccurred())
	return res
}

// TestKstatusReadsTheDatabase holds one report's analysis (its registry does not answer) while a
// new DB arrives: kstatus reads the DB object as InProgress until every report was matched
// against the new DB, then as Current.
func TestKstatusReadsTheDatabase(t *testing.T) {
	g := NewWithT(t)
	g.Eventually(func(g Gomega) status.Status { return kstatusOfDB(g).Status }).WithTimeout(timeout).Should(Equal(status.CurrentStatus))

	release := make(chan struct{})
	released := false
	free := func() {
		if !released {
			released = true
			close(release)
		}
	}
	t.Cleanup(free)
	suite.Registry.SetFault(func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/held/") {
			<-release
		}
		return false
	})
	t.Cleanup(func() { suite.Registry.SetFault(nil) })
	ref, imageID, digest := testsuite.Push(t, suite.Registry, "held/app", testsuite.Image(t.Name()))
	namespace(g, "held")
	app(g, "held", "app", ref, imageID)
	// The report exists (its analysis held) before the DB arrives, so the re-match counts it.
	g.Eventually(func() error {
		return suite.Env.Client.Get(context.Background(), client.ObjectKey{Namespace: "held",
			Name: controllers.ReportName(suite.Registry.Host()+"/held/app", digest)}, &securityv1alpha1.ImageScanReport{})
	}).WithTimeout(timeout).Should(Succeed())

	clk.Step(time.Minute)
	newDB := publish(g, dbBuiltNow())
	g.Eventually(func(g Gomega) {
		res := kstatusOfDB(g)
		g.Expect(res.Status).To(Equal(status.InProgressStatus), res.Message)
		vdb := database(g)
		g.Expect(vdb.Status.Digest).To(Equal(newDB))
		g.Expect(vdb.Status.Rematch).NotTo(BeNil())
	}).WithTimeout(timeout).Should(Succeed())
	g.Consistently(func(g Gomega) status.Status { return kstatusOfDB(g).Status }).WithTimeout(2 * time.Second).Should(Equal(status.InProgressStatus))

	free()
	vdb := rematched(g, newDB)
	g.Expect(kstatusOfDB(g).Status).To(Equal(status.CurrentStatus))
	g.Expect(vdb.Status.Rematch.Current).To(Equal(vdb.Status.Rematch.Reports))
	readyReport(g, "held", "held/app", digest)
}
