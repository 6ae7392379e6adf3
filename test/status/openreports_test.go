package status_test

import (
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	openreportsv1alpha1 "github.com/openreports/reports-api/apis/openreports.io/v1alpha1"
	dto "github.com/prometheus/client_model/go"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	wgpolicyv1alpha2 "github.com/imageguard/imageguard/api/wgpolicyk8s/v1alpha2"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/testsuite"
)

// openReportsCRDs is where `make manifests` keeps OpenReports' own CRDs.
func openReportsCRDs() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "config", "crd", "openreports")
}

// reconcileErrors returns controller-runtime's count of failed reconciles of controller.
func reconcileErrors(g Gomega, controller string) float64 {
	families, err := ctrlmetrics.Registry.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_errors_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if label(m, "controller") == controller {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// comparable is what a PolicyReport's and a Report's result must share.
type comparableResult struct {
	Policy, Rule, Result, Severity, Message, Subject string
}

func wgResults(r *wgpolicyv1alpha2.PolicyReport) []comparableResult {
	var out []comparableResult
	for _, res := range r.Results {
		out = append(out, comparableResult{res.Policy, res.Rule, string(res.Result), string(res.Severity), res.Description, res.Subjects[0].Kind + "/" + res.Subjects[0].Name})
	}
	return out
}

func orResults(r *openreportsv1alpha1.Report) []comparableResult {
	var out []comparableResult
	for _, res := range r.Results {
		out = append(out, comparableResult{res.Policy, res.Rule, string(res.Result), string(res.Severity), res.Description, res.Subjects[0].Kind + "/" + res.Subjects[0].Name})
	}
	return out
}

// TestOpenReportsFollowTheirCRD installs OpenReports' CRDs after the controller started: Reports
// appear with the PolicyReports' results; removing the CRDs stops their writes without errors,
// while PolicyReports go on.
func TestOpenReportsFollowTheirCRD(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref, imageID, _ := testsuite.Push(t, suite.Registry, "open/web", testsuite.Image(t.Name()))
	namespace(g, "open")
	g.Expect(suite.Env.Client.Create(ctx, &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "trusted", Namespace: "open"},
		Spec: securityv1alpha1.ImagePolicySpec{Rules: securityv1alpha1.PolicyRules{
			Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}},
			Tags:       &securityv1alpha1.TagRule{DisallowLatest: true},
		}},
	})).To(Succeed())
	app(g, "open", "web", ref, imageID)
	key := client.ObjectKey{Namespace: "open", Name: controllers.PolicyReportName}
	pr := &wgpolicyv1alpha2.PolicyReport{}
	g.Eventually(func(g Gomega) {
		g.Expect(suite.Env.Client.Get(ctx, key, pr)).To(Succeed())
		g.Expect(pr.Results).To(HaveLen(2))
	}).WithTimeout(timeout).Should(Succeed())

	crds, err := envtest.InstallCRDs(suite.Env.Config, envtest.CRDInstallOptions{Paths: []string{openReportsCRDs()}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(crds).To(HaveLen(2))
	rep := &openreportsv1alpha1.Report{}
	g.Eventually(func(g Gomega) {
		g.Expect(suite.Env.Client.Get(ctx, key, rep)).To(Succeed())
		g.Expect(suite.Env.Client.Get(ctx, key, pr)).To(Succeed())
		g.Expect(orResults(rep)).To(Equal(wgResults(pr)))
	}).WithTimeout(timeout).Should(Succeed())
	g.Expect(rep.Source).To(Equal("imageguard"))
	g.Expect(rep.Summary.Fail).To(Equal(pr.Summary.Fail))
	g.Expect(rep.Summary.Fail).To(Equal(1), "the registry is not trusted; the tag is pinned")

	// The CRDs go: no more writes of Reports, and no failed reconcile, while PolicyReports follow
	// a new workload.
	g.Expect(envtest.UninstallCRDs(suite.Env.Config, envtest.CRDInstallOptions{Paths: []string{openReportsCRDs()}})).To(Succeed())
	g.Eventually(func() bool {
		err := suite.Env.Client.Get(ctx, client.ObjectKey{Name: "reports.openreports.io"}, &apiextensionsv1.CustomResourceDefinition{})
		return apierrors.IsNotFound(err)
	}).WithTimeout(timeout).Should(BeTrue())
	errorsBefore := reconcileErrors(g, "policyreport")
	ref2, imageID2, _ := testsuite.Push(t, suite.Registry, "open/api", testsuite.Image(t.Name()+"2"))
	app(g, "open", "api", ref2, imageID2)
	g.Eventually(func(g Gomega) {
		g.Expect(suite.Env.Client.Get(ctx, key, pr)).To(Succeed())
		g.Expect(pr.Results).To(HaveLen(4))
	}).WithTimeout(timeout).Should(Succeed())
	g.Consistently(func(g Gomega) float64 { return reconcileErrors(g, "policyreport") }).WithTimeout(3 * time.Second).Should(Equal(errorsBefore))
}
