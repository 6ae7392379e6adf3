// Package integrity tests admission against the whole cluster: a real kube-apiserver and
// kube-controller-manager (Deployments, ReplicaSets, Jobs and CronJobs make their pods for real),
// webhooks registered with failurePolicy Ignore as the chart does, the API server presenting a
// client certificate the webhook requires, a real registry and DB.
package integrity

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

const (
	admissionLabel = "imageguard-test/admission"
	timeout        = 90 * time.Second
	// budget is the decision budget: well under the webhooks' 5s timeout.
	budget = 2 * time.Second
)

var suite *testsuite.Suite

// baseAdvisories: the images of these tests have busybox (HIGH) and libcrypto3 (CRITICAL, from
// openssl), and some a package of their own that a later DB makes critical.
const baseAdvisories = `
updatedAt: 2026-11-01T00:00:00Z
advisories:
- {id: CVE-2026-1001, ecosystem: alpine 3.22, package: openssl, fixedVersion: 3.5.2-r0, severity: CRITICAL}
- {id: CVE-2026-1002, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r20, severity: HIGH}
`

func dbSpec(extra ...testutil.AdvisorySpec) *testutil.DBSpec {
	spec, err := testutil.ParseAdvisories([]byte(baseAdvisories))
	if err != nil {
		panic(err)
	}
	spec.Advisories = append(spec.Advisories, extra...)
	return spec
}

func TestMain(m *testing.M) {
	var err error
	suite, err = testsuite.Start(testsuite.Options{
		ControllerManager: true, AdmissionLabel: admissionLabel, IgnoreWebhookFailures: true, DB: dbSpec(),
		Controllers: controllers.Options{
			ScanConcurrency: 2, ReportMaxBytes: 64 << 10, ReportRetention: time.Hour, RescanInterval: time.Hour,
			ExcludedNamespaces: []string{"kube-system"},
			Admission: &controllers.AdmissionOptions{
				Budget: budget, ExcludedNamespaces: []string{"kube-system"},
			},
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if code != 0 && os.Getenv("TEST_VERBOSE") != "" {
		fmt.Fprintln(os.Stderr, suite.Env.ControllerManagerLog())
	}
	suite.Stop()
	os.Exit(code)
}

// judgedNamespace makes a namespace the webhook judges, with an ImagePolicy of rules, and waits
// until the policy is in the cache admission reads.
func judgedNamespace(g Gomega, ns string, rules securityv1alpha1.PolicyRules) {
	ctx := context.Background()
	g.Expect(suite.Env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns, Labels: map[string]string{admissionLabel: "true"},
	}})).To(Succeed())
	p := &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "enforced", Namespace: ns},
		Spec:       securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce, Rules: rules},
	}
	g.Expect(suite.Env.Client.Create(ctx, p)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKeyFromObject(p), p)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(p.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
	}).WithTimeout(timeout).Should(Succeed())
}

// kubectl runs the real kubectl with manifest on stdin (when not empty) and returns its stdout,
// stderr and error.
func kubectl(manifest string, args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	cmd := suite.Env.KubectlCmd(context.Background(), args...)
	if manifest != "" {
		cmd.Stdin = strings.NewReader(manifest)
	}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// reportOf waits until the report of repo@digest in ns holds a scan and returns it.
func reportOf(g Gomega, ns, repo, digest string, ok func(*securityv1alpha1.ImageScanReport) bool) *securityv1alpha1.ImageScanReport {
	r := &securityv1alpha1.ImageScanReport{}
	g.Eventually(func(g Gomega) {
		key := client.ObjectKey{Namespace: ns, Name: controllers.ReportName(repo, digest)}
		g.Expect(suite.Env.Client.Get(context.Background(), key, r)).To(Succeed())
		g.Expect(ok(r)).To(BeTrue(), "conditions %v, summary %v", r.Status.Conditions, r.Status.Summary)
	}).WithTimeout(timeout).Should(Succeed())
	return r
}

func scanned(r *securityv1alpha1.ImageScanReport) bool {
	return meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)
}
