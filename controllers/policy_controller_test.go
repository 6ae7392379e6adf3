package controllers_test

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	wgpolicyv1alpha2 "github.com/imageguard/imageguard/api/wgpolicyk8s/v1alpha2"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// deployment creates a Deployment running ref, with a ReplicaSet and a pod as the cluster's
// controllers and kubelet would, so that the pod controller makes the image's report.
func deployment(g Gomega, ns, name, ref, imageID string) *appsv1.Deployment {
	ctx := context.Background()
	labels := map[string]string{"app": name}
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}},
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	g.Expect(env.Client.Create(ctx, d)).To(Succeed())
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-7c9d", Namespace: ns, Labels: labels, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "Deployment", Name: d.Name, UID: d.UID, Controller: ptr.To(true),
		}}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	g.Expect(env.Client.Create(ctx, rs)).To(Succeed())
	createPod(g, ns, name+"-7c9d-x1", ref, imageID, withOwner(rs, "ReplicaSet"))
	return d
}

func policyStatus(g Gomega, key client.ObjectKey) *securityv1alpha1.ImagePolicy {
	p := &securityv1alpha1.ImagePolicy{}
	g.Expect(env.Client.Get(context.Background(), key, p)).To(Succeed())
	g.Expect(p.Status.ObservedGeneration).To(Equal(p.Generation))
	return p
}

func TestPolicyMarksNonCompliantWorkloads(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref, imageID, digest := testsuite.Push(t, reg, "policy/web", testsuite.Image(t.Name()))
	namespace(g, "policy")
	d := deployment(g, "policy", "web", ref, imageID)
	readyReport(g, "policy", "policy/web", digest)

	pol := &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "no-critical", Namespace: "policy"},
		Spec: securityv1alpha1.ImagePolicySpec{Rules: securityv1alpha1.PolicyRules{
			Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		}},
	}
	g.Expect(env.Client.Create(ctx, pol)).To(Succeed())
	key := client.ObjectKeyFromObject(pol)

	// A Deployment running an image with a critical finding does not comply, with the rule and
	// the counts in the reason; the policy itself is Ready, and kstatus reads it as Current.
	g.Eventually(func(g Gomega) {
		p := policyStatus(g, key)
		g.Expect(meta.IsStatusConditionTrue(p.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
		g.Expect(meta.IsStatusConditionFalse(p.Status.Conditions, securityv1alpha1.ConditionCompliant)).To(BeTrue())
		g.Expect(p.Status.Summary).To(Equal(&securityv1alpha1.PolicySummary{Workloads: 1, NonCompliant: 1}))
		g.Expect(p.Status.NonCompliant).To(HaveLen(1))
		g.Expect(p.Status.NonCompliant[0].Kind).To(Equal("Deployment"))
		g.Expect(p.Status.NonCompliant[0].Name).To(Equal("web"))
		g.Expect(p.Status.NonCompliant[0].Reasons).To(ConsistOf(SatisfyAll(ContainSubstring(": vulnerabilities: 1 critical (max 0)"), Not(ContainSubstring("vulnerabilities: vulnerabilities")))))
	}).WithTimeout(timeout).Should(Succeed())
	// The same verdict in the namespace's PolicyReport, for Policy Reporter.
	g.Eventually(func(g Gomega) {
		report := &wgpolicyv1alpha2.PolicyReport{}
		g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: "policy", Name: controllers.PolicyReportName}, report)).To(Succeed())
		g.Expect(report.Results).To(ContainElement(SatisfyAll(
			HaveField("Policy", "no-critical"), HaveField("Rule", "vulnerabilities"),
			HaveField("Result", wgpolicyv1alpha2.ResultFail), HaveField("Severity", wgpolicyv1alpha2.Severity("high")),
			HaveField("Description", ContainSubstring("1 critical (max 0)")),
			HaveField("Subjects", ConsistOf(SatisfyAll(HaveField("Kind", "Deployment"), HaveField("Name", "web")))),
		)))
		g.Expect(report.Summary.Fail).To(BeNumerically(">=", 1))
	}).WithTimeout(timeout).Should(Succeed())
	raw := must(runtime.DefaultUnstructuredConverter.ToUnstructured(policyStatus(g, key)))
	res, err := status.Compute(&unstructured.Unstructured{Object: raw})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Status).To(Equal(status.CurrentStatus))
	// Argo CD too: non-compliant workloads never make the policy unhealthy.
	argo, kstatus := gitOpsHealth(g, pol)
	g.Expect(argo).To(Equal("Healthy"))
	g.Expect(kstatus).To(Equal(status.CurrentStatus))
	g.Expect(promtestutil.ToFloat64(metrics.WorkloadCompliant.WithLabelValues("ImagePolicy/policy/no-critical", "policy", "Deployment", "web"))).To(Equal(0.0))
	g.Eventually(func(g Gomega) {
		list := &eventsv1.EventList{}
		g.Expect(env.Client.List(ctx, list, client.InNamespace("policy"))).To(Succeed())
		var reasons []string
		for _, e := range list.Items {
			if e.Regarding.Kind == "Deployment" && e.Regarding.Name == d.Name {
				reasons = append(reasons, e.Reason)
			}
		}
		g.Expect(reasons).To(ContainElement(securityv1alpha1.ReasonNonCompliant))
	}).WithTimeout(timeout).Should(Succeed())

	// An exception makes it comply; at its expiry it stops applying without anyone touching the
	// policy.
	g.Expect(env.Client.Get(ctx, key, pol)).To(Succeed())
	pol.Spec.Rules.Exceptions = []securityv1alpha1.VulnerabilityException{{
		ID: "CVE-2026-1001", Expires: metav1.NewTime(time.Now().Add(8 * time.Second)), Reason: "patched in the next release",
	}}
	g.Expect(env.Client.Update(ctx, pol)).To(Succeed())
	g.Eventually(func(g Gomega) {
		p := policyStatus(g, key)
		g.Expect(meta.IsStatusConditionTrue(p.Status.Conditions, securityv1alpha1.ConditionCompliant)).To(BeTrue())
		g.Expect(p.Status.Summary.Compliant).To(BeEquivalentTo(1))
		report := &wgpolicyv1alpha2.PolicyReport{}
		g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: "policy", Name: controllers.PolicyReportName}, report)).To(Succeed())
		g.Expect(report.Results).To(ContainElement(SatisfyAll(
			HaveField("Policy", "no-critical"), HaveField("Rule", "vulnerabilities"), HaveField("Result", wgpolicyv1alpha2.ResultPass),
		)))
	}).WithTimeout(timeout).Should(Succeed())
	g.Eventually(func(g Gomega) {
		p := policyStatus(g, key)
		g.Expect(meta.IsStatusConditionFalse(p.Status.Conditions, securityv1alpha1.ConditionCompliant)).To(BeTrue())
	}).WithTimeout(timeout).Should(Succeed())

	// A permanent exception, then a new DB with a new critical advisory: non-compliant again.
	g.Expect(env.Client.Get(ctx, key, pol)).To(Succeed())
	pol.Spec.Rules.Exceptions[0].Expires = metav1.NewTime(time.Now().Add(24 * time.Hour))
	g.Expect(env.Client.Update(ctx, pol)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(meta.IsStatusConditionTrue(policyStatus(g, key).Status.Conditions, securityv1alpha1.ConditionCompliant)).To(BeTrue())
	}).WithTimeout(timeout).Should(Succeed())
	newCritical := testutil.AdvisorySpec{ID: "CVE-2026-1006", Ecosystem: "alpine 3.22", Package: "openssl", FixedVersion: "3.5.3-r0", Severity: "CRITICAL"}
	reg.PublishDB(t, dbRepo, "2", dbSpec(zlibAdvisory, newCritical))
	g.Expect(db.Check(ctx)).To(BeTrue())
	g.Eventually(func(g Gomega) {
		p := policyStatus(g, key)
		g.Expect(meta.IsStatusConditionFalse(p.Status.Conditions, securityv1alpha1.ConditionCompliant)).To(BeTrue())
		g.Expect(p.Status.NonCompliant[0].Reasons).To(ConsistOf(ContainSubstring("1 critical (max 0), 1 excepted")))
	}).WithTimeout(timeout).Should(Succeed())
}

func TestInvalidPolicyStalls(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	namespace(g, "policy-invalid")
	// The schema accepts any operator string; the controller cannot use this selector, ever.
	pol := &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "bad-selector", Namespace: "policy-invalid"},
		Spec: securityv1alpha1.ImagePolicySpec{
			Match: securityv1alpha1.ImageMatch{Selector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}}},
			Rules: securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}},
		},
	}
	g.Expect(env.Client.Create(ctx, pol)).To(Succeed())
	g.Eventually(func(g Gomega) {
		p := policyStatus(g, client.ObjectKeyFromObject(pol))
		ready := meta.FindStatusCondition(p.Status.Conditions, securityv1alpha1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Reason).To(Equal(securityv1alpha1.ReasonInvalidPolicy))
		g.Expect(ready.Message).To(ContainSubstring("match.selector"))
		raw := must(runtime.DefaultUnstructuredConverter.ToUnstructured(p))
		res, err := status.Compute(&unstructured.Unstructured{Object: raw})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res.Status).To(Equal(status.FailedStatus))
		argo, _ := gitOpsHealth(g, p)
		g.Expect(argo).To(Equal("Degraded"))
	}).WithTimeout(timeout).Should(Succeed())
}
