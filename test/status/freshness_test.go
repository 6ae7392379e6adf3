package status_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// writes counts the updates of the reports of ns from now on, through a watch (a poll could miss
// two writes between looks).
type writes struct {
	mu sync.Mutex
	n  map[string]int
	w  watch.Interface
}

func countWrites(t *testing.T, g Gomega, ns string) *writes {
	c, err := client.NewWithWatch(suite.Env.Config, client.Options{Scheme: scheme.New()})
	g.Expect(err).NotTo(HaveOccurred())
	list := &securityv1alpha1.ImageScanReportList{}
	g.Expect(c.List(context.Background(), list, client.InNamespace(ns))).To(Succeed())
	w, err := c.Watch(context.Background(), &securityv1alpha1.ImageScanReportList{},
		client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
	g.Expect(err).NotTo(HaveOccurred())
	out := &writes{n: map[string]int{}, w: w}
	go func() {
		for e := range w.ResultChan() {
			if e.Type == watch.Modified {
				out.mu.Lock()
				out.n[e.Object.(*securityv1alpha1.ImageScanReport).Name]++
				out.mu.Unlock()
			}
		}
	}()
	t.Cleanup(w.Stop)
	return out
}

func (w *writes) of(name string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n[name]
}

func (w *writes) total() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, v := range w.n {
		n += v
	}
	return n
}

// compliance returns the policy's Compliant condition and its first non-compliant entry.
func compliance(g Gomega, ns, name string) (*metav1.Condition, *securityv1alpha1.NonCompliantWorkload) {
	p := &securityv1alpha1.ImagePolicy{}
	g.Expect(suite.Env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, p)).To(Succeed())
	c := meta.FindStatusCondition(p.Status.Conditions, securityv1alpha1.ConditionCompliant)
	if len(p.Status.NonCompliant) == 0 {
		return c, nil
	}
	return c, &p.Status.NonCompliant[0]
}

// TestStableImageStaysCompliantWhileDBsArrive runs three days of a stable image under
// `maxScanAge: 1h` while a new DB arrives every 6 hours: compliant throughout, with one report
// write per refresh interval and none per DB; then the DB registry fails for longer than the
// limit: non-compliant with reason DatabaseStale, and the DB object says so.
func TestStableImageStaysCompliantWhileDBsArrive(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref, imageID, digest := testsuite.Push(t, suite.Registry, "stable/web", testsuite.Image(t.Name()))
	namespace(g, "stable")
	g.Expect(suite.Env.Client.Create(ctx, &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "fresh", Namespace: "stable"},
		Spec: securityv1alpha1.ImagePolicySpec{Rules: securityv1alpha1.PolicyRules{
			Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxScanAge: &metav1.Duration{Duration: time.Hour}},
		}},
	})).To(Succeed())
	app(g, "stable", "web", ref, imageID)
	rep := readyReport(g, "stable", "stable/web", digest)
	firstScan := rep.Status.LastScanTime.Time
	writes := countWrites(t, g, "stable")
	compliant := func(g Gomega) {
		c, nc := compliance(g, "stable", "fresh")
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "non-compliant: %+v", nc)
	}
	inUse, _ := suite.DB.Info()
	first := rematched(g, inUse.Digest)
	g.Eventually(compliant).WithTimeout(timeout).Should(Succeed())
	g.Expect(first.Status.Source).To(Equal(suite.Registry.Host() + "/" + testsuite.DBRepository + ":2"))

	// Three days, a DB every 6 hours. The report's findings never change: it is written only when
	// its DB and scan time are a refresh interval (24h) behind.
	for step := 1; step <= 12; step++ {
		clk.Step(6 * time.Hour)
		vdb := rematched(g, publish(g, dbBuiltNow()))
		g.Expect(vdb.Status.BuiltAt.Time).To(BeTemporally("==", clk.Now()))
		g.Expect(vdb.Status.Rematch.Current).To(Equal(vdb.Status.Rematch.Reports))
		// The policy is judged again once the re-match ended (the DB object's write), at the moved
		// clock: a report last written a day ago still counts as matched against this DB.
		g.Eventually(compliant).WithTimeout(timeout).Should(Succeed())
		g.Consistently(compliant).WithTimeout(time.Second).Should(Succeed())
		g.Eventually(func() int { return writes.of(rep.Name) }).WithTimeout(timeout).Should(Equal(step / 4))
	}
	g.Consistently(func() int { return writes.of(rep.Name) }).WithTimeout(2 * time.Second).Should(Equal(3))
	rep = readyReport(g, "stable", "stable/web", digest)
	g.Expect(rep.Status.LastScanTime.Time).To(BeTemporally("==", firstScan.Add(72*time.Hour)))

	// The DB registry fails for longer than the limit: the newest DB ImageGuard has is 2 hours old.
	suite.Registry.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		return strings.Contains(r.URL.Path, testsuite.DBRepository) && testutil.StatusFault(http.StatusServiceUnavailable)(w, r)
	})
	t.Cleanup(func() {
		suite.Registry.SetFault(nil)
		publish(NewWithT(t), dbBuiltNow())
	})
	clk.Step(2 * time.Hour)
	_, err := suite.DB.Check(ctx)
	g.Expect(err).To(HaveOccurred())
	g.Eventually(func(g Gomega) {
		c, nc := compliance(g, "stable", "fresh")
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(nc).NotTo(BeNil())
		g.Expect(nc.Reason).To(Equal(policy.ReasonDatabaseStale), "%+v", nc)
		g.Expect(nc.Reasons).To(ContainElement(ContainSubstring("the newest DB ImageGuard has")))
	}).WithTimeout(timeout).Should(Succeed())
	vdb := database(g)
	g.Expect(vdb.Status.LastError).To(ContainSubstring(testsuite.DBRepository))
	g.Expect(meta.IsStatusConditionTrue(vdb.Status.Conditions, securityv1alpha1.ConditionStale)).To(BeFalse())

	// Past --db-max-age (12h) the DB itself is Stale, which kubectl shows.
	clk.Step(dbMaxAge)
	_, err = suite.DB.Check(ctx)
	g.Expect(err).To(HaveOccurred())
	g.Eventually(func(g Gomega) {
		g.Expect(meta.IsStatusConditionTrue(database(g).Status.Conditions, securityv1alpha1.ConditionStale)).To(BeTrue())
	}).WithTimeout(timeout).Should(Succeed())
	out, err := suite.Env.RunKubectl(ctx, "get", "vulnerabilitydatabases", "-o", "wide")
	g.Expect(err).NotTo(HaveOccurred(), out)
	t.Logf("kubectl get vulnerabilitydatabases -o wide:\n%s", out)
	g.Expect(out).To(MatchRegexp(`NAME\s+SOURCE\s+BUILT\s+AGE\s+REPORTS\s+CURRENT\s+READY\s+STALE`))
	g.Expect(out).To(MatchRegexp(`trivy-db\s+` + suite.Registry.Host() + `/aquasecurity/trivy-db:2\s+\S+\s+\S+\s+\d+\s+\d+\s+True\s+True`))
	// Not one report write for any of it.
	g.Expect(writes.of(rep.Name)).To(Equal(3))
	g.Expect(writes.total()).To(Equal(3))
}
