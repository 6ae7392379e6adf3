// Package status_test runs the whole of ImageGuard (real API server, registry and DB) with a
// clock the tests move, to show that what its objects say is true now, or says how old it is:
// freshness over days of DB updates with no write per report, the VulnerabilityDatabase object,
// what a DB update changed, and OpenReports' Reports following their CRD.
package status_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

var (
	suite *testsuite.Suite
	clk   *clocktesting.FakeClock
	// t0 is when the suite's first DB was built, and the clock's start.
	t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
)

const (
	timeout = 60 * time.Second
	// dbMaxAge is the suite's --db-max-age.
	dbMaxAge = 12 * time.Hour
	// refresh is the suite's --report-refresh-interval.
	refresh = 24 * time.Hour
)

// baseAdvisories are in every DB the tests publish.
const baseAdvisories = `
advisories:
- {id: CVE-2026-1001, ecosystem: alpine 3.22, package: openssl, fixedVersion: 3.5.2-r0, severity: CRITICAL}
- {id: CVE-2026-1002, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r20, severity: HIGH}
`

// dbBuiltNow is the base DB and extra advisories, built at the clock's now.
func dbBuiltNow(extra ...testutil.AdvisorySpec) *testutil.DBSpec {
	spec, err := testutil.ParseAdvisories([]byte(baseAdvisories))
	if err != nil {
		panic(err)
	}
	spec.Advisories = append(spec.Advisories, extra...)
	spec.UpdatedAt = clk.Now()
	return spec
}

func TestMain(m *testing.M) {
	clk = clocktesting.NewFakeClock(t0)
	var err error
	suite, err = testsuite.Start(testsuite.Options{
		DB: dbBuiltNow(), Clock: clk, AdmissionLabel: "imageguard-status-test-admission",
		Controllers: controllers.Options{
			ScanConcurrency: 2, RescanInterval: time.Hour, ReportRetention: time.Hour,
			ExcludedNamespaces: []string{"kube-system"}, DBMaxAge: dbMaxAge, ReportRefreshInterval: refresh,
			PolicyReports: []controllers.ReportFormat{controllers.FormatWGPolicy, controllers.FormatOpenReports},
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	suite.Stop()
	os.Exit(code)
}

// publish publishes spec as the DB and has the DB manager check for it at once.
func publish(g Gomega, spec *testutil.DBSpec) string {
	suite.Registry.PublishDB(suite.TB, testsuite.DBRepository, "2", spec)
	swapped, err := suite.DB.Check(context.Background())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(swapped).To(BeTrue())
	info, _ := suite.DB.Info()
	return info.Digest
}

// database returns the VulnerabilityDatabase object.
func database(g Gomega) *securityv1alpha1.VulnerabilityDatabase {
	vdb := &securityv1alpha1.VulnerabilityDatabase{}
	g.Expect(suite.Env.Client.Get(context.Background(), client.ObjectKey{Name: securityv1alpha1.VulnerabilityDatabaseName}, vdb)).To(Succeed())
	return vdb
}

// rematched waits until the object says every report was matched against the DB digest.
func rematched(g Gomega, digest string) *securityv1alpha1.VulnerabilityDatabase {
	var vdb *securityv1alpha1.VulnerabilityDatabase
	g.Eventually(func(g Gomega) {
		vdb = database(g)
		g.Expect(vdb.Status.Digest).To(Equal(digest))
		ready := meta.FindStatusCondition(vdb.Status.Conditions, securityv1alpha1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Reason).To(Equal(securityv1alpha1.ReasonCurrent), "conditions: %v, rematch %+v, digest %s", vdb.Status.Conditions, vdb.Status.Rematch, vdb.Status.Digest)
	}).WithTimeout(timeout).Should(Succeed())
	return vdb
}

// app is a Deployment and one pod of it running ref (with the kubelet's image ID), as the
// workload controllers would make them.
func app(g Gomega, ns, name, ref, imageID string) *appsv1.Deployment {
	ctx := context.Background()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}},
			},
		},
	}
	g.Expect(suite.Env.Client.Create(ctx, d)).To(Succeed())
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-1", Namespace: ns, Labels: labels, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "Deployment", Name: d.Name, UID: d.UID, Controller: ptr.To(true),
		}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}},
	}
	g.Expect(suite.Env.Client.Create(ctx, pod)).To(Succeed())
	pod.Status.Phase = corev1.PodRunning
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: ref, ImageID: imageID}}
	g.Expect(suite.Env.Client.Status().Update(ctx, pod)).To(Succeed())
	return d
}

func namespace(g Gomega, name string) {
	g.Expect(suite.Env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
}

// readyReport waits until the report of digest in ns is Ready and names its workload.
func readyReport(g Gomega, ns, repo, digest string) *securityv1alpha1.ImageScanReport {
	var r *securityv1alpha1.ImageScanReport
	key := client.ObjectKey{Namespace: ns, Name: controllers.ReportName(suite.Registry.Host()+"/"+repo, digest)}
	g.Eventually(func(g Gomega) {
		r = &securityv1alpha1.ImageScanReport{}
		g.Expect(suite.Env.Client.Get(context.Background(), key, r)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue(), "conditions: %v", r.Status.Conditions)
		g.Expect(r.Status.Workloads).NotTo(BeEmpty())
	}).WithTimeout(timeout).Should(Succeed())
	return r
}
