package controllers_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/test/argocd"
)

// gitOpsHealth is what Argo CD (the shipped health check) and kstatus read of obj as the API
// server holds it.
func gitOpsHealth(g Gomega, obj client.Object) (string, status.Status) {
	g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(obj), obj)).To(Succeed())
	argo, _, err := argocd.HealthOf(obj)
	g.Expect(err).NotTo(HaveOccurred())
	raw := must(runtime.DefaultUnstructuredConverter.ToUnstructured(obj))
	res, err := status.Compute(&unstructured.Unstructured{Object: raw})
	g.Expect(err).NotTo(HaveOccurred())
	return argo, res.Status
}

// TestGitOpsToolsReadWhatTheControllerWrote reads the health of reports as the controller wrote
// them: current, being retried, failed for good. Policies are read the same way by
// TestPolicyMarksNonCompliantWorkloads (valid) and TestInvalidPolicyStalls (invalid).
func TestGitOpsToolsReadWhatTheControllerWrote(t *testing.T) {
	g := NewWithT(t)
	namespace(g, "gitops")

	// Current: Healthy and Current.
	ref, imageID, digest := testsuite.Push(t, reg, "gitops/current", testsuite.Image(t.Name()))
	createPod(g, "gitops", "current", ref, imageID)
	current := readyReport(g, "gitops", "gitops/current", digest)
	argo, kstatus := gitOpsHealth(g, current)
	g.Expect(argo).To(Equal("Healthy"))
	g.Expect(kstatus).To(Equal(status.CurrentStatus))

	// A private image without its pull secret: retried with backoff. Argo CD shows it Degraded
	// (it needs a pull secret), kstatus InProgress (Reconciling), and the generation is observed.
	privRef, d := private.Push(t, "gitops/private", "1.0", testsuite.Image(t.Name()+"-private"))
	createPod(g, "gitops", "private", privRef, private.Host()+"/gitops/private@"+d.String())
	retried := &securityv1alpha1.ImageScanReport{ObjectMeta: metav1.ObjectMeta{
		Namespace: "gitops", Name: controllers.ReportName(private.Host()+"/gitops/private", d.String()),
	}}
	g.Eventually(func(g Gomega) {
		argo, kstatus := gitOpsHealth(g, retried)
		g.Expect(meta.FindStatusCondition(retried.Status.Conditions, securityv1alpha1.ConditionReconciling)).To(
			HaveField("Reason", securityv1alpha1.ReasonUnauthorized))
		g.Expect(retried.Status.ObservedGeneration).To(Equal(retried.Generation))
		g.Expect(argo).To(Equal("Degraded"))
		g.Expect(kstatus).To(Equal(status.InProgressStatus))
	}).WithTimeout(timeout).Should(Succeed())

	// An image the scanner refuses for good (a layer path leaving the root): its first scan
	// failed and is not retried. Degraded and Failed.
	base := must(testsuite.Image(t.Name() + "-hostile").Layers())
	hostile := must(testutil.ImageFromLayers(testutil.LinuxAMD64, append(base, testutil.PathTraversalLayer())...))
	hostileRef, hostileID, hostileDigest := testsuite.Push(t, reg, "gitops/hostile", hostile)
	createPod(g, "gitops", "hostile", hostileRef, hostileID)
	stalled := &securityv1alpha1.ImageScanReport{ObjectMeta: metav1.ObjectMeta{
		Namespace: "gitops", Name: controllers.ReportName(reg.Host()+"/gitops/hostile", hostileDigest),
	}}
	g.Eventually(func(g Gomega) {
		argo, kstatus := gitOpsHealth(g, stalled)
		g.Expect(meta.IsStatusConditionTrue(stalled.Status.Conditions, securityv1alpha1.ConditionStalled)).To(BeTrue())
		g.Expect(meta.FindStatusCondition(stalled.Status.Conditions, securityv1alpha1.ConditionReconciling)).To(BeNil())
		g.Expect(argo).To(Equal("Degraded"))
		g.Expect(kstatus).To(Equal(status.FailedStatus))
	}).WithTimeout(timeout).Should(Succeed())

}

// series counts the lines of the metrics endpoint, as Prometheus scrapes it, that name metric and
// hold label="value".
func series(g Gomega, metric, label, value string) int {
	srv := httptest.NewServer(promhttp.HandlerFor(ctrlmetrics.Registry, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body := must(io.ReadAll(resp.Body))
	n := 0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, metric+"{") && strings.Contains(line, fmt.Sprintf("%s=%q", label, value)) {
			n++
		}
	}
	return n
}

// TestDeletedObjectsLeaveNoMetricSeries creates 100 workloads under a policy, then deletes them,
// the policy and a report, and reads the metrics endpoint: nothing of them is left.
func TestDeletedObjectsLeaveNoMetricSeries(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "lifecycle"
	namespace(g, ns)
	ref, imageID, digest := testsuite.Push(t, reg, "lifecycle/app", testsuite.Image(t.Name()))
	pod := createPod(g, ns, "scanned", ref, imageID)
	rep := readyReport(g, ns, "lifecycle/app", digest)
	g.Eventually(func() int { return series(g, "imageguard_image_vulnerabilities", "report", rep.Name) }).Should(Equal(5))

	pol := &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "no-critical", Namespace: ns},
		Spec: securityv1alpha1.ImagePolicySpec{Rules: securityv1alpha1.PolicyRules{
			Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		}},
	}
	g.Expect(env.Client.Create(ctx, pol)).To(Succeed())
	const workloads = 100
	c := benchClient(t)
	for i := range workloads {
		labels := map[string]string{"app": fmt.Sprintf("w%03d", i)}
		g.Expect(c.Create(ctx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("w%03d", i), Namespace: ns, Labels: labels},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}},
			}},
		})).To(Succeed())
	}
	policyRef := "ImagePolicy/" + ns + "/" + pol.Name
	g.Eventually(func(g Gomega) {
		g.Expect(policyStatus(g, client.ObjectKeyFromObject(pol)).Status.Summary).To(HaveField("Workloads", BeEquivalentTo(workloads+1)))
		g.Expect(series(g, "imageguard_workload_compliant", "policy", policyRef)).To(Equal(workloads + 1))
	}).WithTimeout(timeout).Should(Succeed())

	g.Expect(c.DeleteAllOf(ctx, &appsv1.Deployment{}, client.InNamespace(ns))).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(policyStatus(g, client.ObjectKeyFromObject(pol)).Status.Summary).To(HaveField("Workloads", BeEquivalentTo(1)))
		g.Expect(series(g, "imageguard_workload_compliant", "policy", policyRef)).To(Equal(1))
	}).WithTimeout(timeout).Should(Succeed())

	// The policy gone, so are its series; the report gone, so are its.
	g.Expect(env.Client.Delete(ctx, pol)).To(Succeed())
	g.Eventually(func() int { return series(g, "imageguard_workload_compliant", "policy", policyRef) }).WithTimeout(timeout).Should(BeZero())
	g.Expect(env.Client.Delete(ctx, pod, client.GracePeriodSeconds(0))).To(Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKeyFromObject(rep), &securityv1alpha1.ImageScanReport{}))
	}).WithTimeout(timeout).Should(BeTrue())
	g.Eventually(func() int { return series(g, "imageguard_image_vulnerabilities", "report", rep.Name) }).WithTimeout(timeout).Should(BeZero())
}

// TestOwnersOutsideTheTableAreJudgedThroughTheirPods judges a pod of an Argo Rollout (through its
// ReplicaSet) as the Rollout, and counts a bare pod's ephemeral container.
func TestOwnersOutsideTheTableAreJudgedThroughTheirPods(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "owners"
	namespace(g, ns)
	ref, imageID, digest := testsuite.Push(t, reg, "owners/canary", testsuite.Image(t.Name()))
	cleanRef, cleanID, cleanDigest := testsuite.Push(t, reg, "owners/clean", testsuite.ImageOf(t.Name()+"-clean"))
	labels := map[string]string{"app": "canary"}
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "canary-6f7d", Namespace: ns, Labels: labels, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "argoproj.io/v1alpha1", Kind: "Rollout", Name: "canary", UID: types.UID("0b0c5a1e-7e57-4a11-9f00-000000000001"), Controller: ptr.To(true),
		}}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}},
		}},
	}
	g.Expect(env.Client.Create(ctx, rs)).To(Succeed())
	createPod(g, ns, "canary-6f7d-x1", ref, imageID, withOwner(rs, "ReplicaSet"), func(p *corev1.Pod) { p.Labels = labels })

	// A bare pod whose regular container is clean, debugged with an ephemeral container that is not.
	debugged := createPod(g, ns, "debugged", cleanRef, cleanID)
	debugged.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name: "debugger", Image: ref,
	}}}
	g.Expect(env.Client.SubResource("ephemeralcontainers").Update(ctx, debugged)).To(Succeed())
	readyReport(g, ns, "owners/canary", digest)
	readyReport(g, ns, "owners/clean", cleanDigest)
	g.Eventually(func(g Gomega) {
		g.Expect(report(g, ns, "owners/canary", digest).Status.Workloads).To(ConsistOf(
			securityv1alpha1.Workload{Kind: "Rollout", Name: "canary", Containers: []string{"app"}},
			securityv1alpha1.Workload{Kind: "Pod", Name: "debugged", Containers: []string{"debugger"}},
		))
	}).WithTimeout(timeout).Should(Succeed())

	pol := &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "no-critical", Namespace: ns},
		Spec: securityv1alpha1.ImagePolicySpec{Rules: securityv1alpha1.PolicyRules{
			Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		}},
	}
	g.Expect(env.Client.Create(ctx, pol)).To(Succeed())
	g.Eventually(func(g Gomega) {
		p := policyStatus(g, client.ObjectKeyFromObject(pol))
		g.Expect(p.Status.Summary).To(Equal(&securityv1alpha1.PolicySummary{Workloads: 2, NonCompliant: 2}))
		g.Expect(p.Status.NonCompliant).To(ConsistOf(
			SatisfyAll(HaveField("Kind", "Rollout"), HaveField("Name", "canary"), HaveField("Reasons", ConsistOf(ContainSubstring(ref+": vulnerabilities: 1 critical")))),
			SatisfyAll(HaveField("Kind", "Pod"), HaveField("Name", "debugged"), HaveField("Reasons", ConsistOf(ContainSubstring(ref+": vulnerabilities: 1 critical")))),
		))
	}).WithTimeout(timeout).Should(Succeed())
}
