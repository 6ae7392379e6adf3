package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	. "github.com/onsi/gomega"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

const timeout = 60 * time.Second

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func namespace(g Gomega, name string) {
	g.Expect(env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
}

// podOption changes a pod before it is created.
type podOption func(*corev1.Pod)

func withOwner(obj client.Object, kind string) podOption {
	return func(p *corev1.Pod) {
		p.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: kind, Name: obj.GetName(), UID: obj.GetUID(), Controller: ptr.To(true),
		}}
	}
}

func withInit(name, image string) podOption {
	return func(p *corev1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: name, Image: image})
	}
}

// createPod creates a pod running image in container "app"; with imageID set, it reports the
// image ID in its status as a kubelet would.
func createPod(g Gomega, ns, name, image, imageID string, opts ...podOption) *corev1.Pod {
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}},
	}
	for _, o := range opts {
		o(pod)
	}
	g.Expect(env.Client.Create(ctx, pod)).To(Succeed())
	if imageID != "" {
		pod.Status.Phase = corev1.PodRunning
		for _, c := range pod.Spec.InitContainers {
			pod.Status.InitContainerStatuses = append(pod.Status.InitContainerStatuses, corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: imageID})
		}
		pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: image, ImageID: imageID}}
		g.Expect(env.Client.Status().Update(ctx, pod)).To(Succeed())
	}
	return pod
}

func report(g Gomega, ns, repo, digest string) *securityv1alpha1.ImageScanReport {
	r := &securityv1alpha1.ImageScanReport{}
	key := client.ObjectKey{Namespace: ns, Name: controllers.ReportName(reg.Host()+"/"+repo, digest)}
	g.Expect(env.Client.Get(context.Background(), key, r)).To(Succeed())
	return r
}

// readyReport waits until the report of repo@digest in ns is Ready and returns it.
func readyReport(g Gomega, ns, repo, digest string) *securityv1alpha1.ImageScanReport {
	var r *securityv1alpha1.ImageScanReport
	g.Eventually(func(g Gomega) {
		r = report(g, ns, repo, digest)
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue(), "conditions: %v", r.Status.Conditions)
	}).WithTimeout(timeout).Should(Succeed())
	return r
}

func ids(r *securityv1alpha1.ImageScanReport) []string {
	var out []string
	for _, v := range r.Status.Vulnerabilities {
		out = append(out, v.ID)
	}
	return out
}

func TestSharedImageIsAnalysedOnce(t *testing.T) {
	g := NewWithT(t)
	ref, imageID, digest := testsuite.Push(t, reg, "shared/app", testsuite.Image(t.Name()))
	before := scan.Analyses()
	reg.ResetCounts()
	namespace(g, "shared-a")
	namespace(g, "shared-b")
	createPod(g, "shared-a", "web", ref, imageID)
	createPod(g, "shared-b", "worker", ref, imageID, withInit("migrate", ref))

	a := readyReport(g, "shared-a", "shared/app", digest)
	b := readyReport(g, "shared-b", "shared/app", digest)
	g.Expect(scan.Analyses() - before).To(BeEquivalentTo(1))
	// The config and the two layers, each read once for the whole cluster; the base layer not at
	// all when the layer cache has it from an earlier test's image.
	g.Expect(reg.Counts().BlobGETs).To(BeElementOf(2, 3))

	for _, r := range []*securityv1alpha1.ImageScanReport{a, b} {
		g.Expect(r.Spec.Image).To(Equal(reg.Host() + "/shared/app"))
		g.Expect(r.Spec.Tags).To(Equal([]string{"1.0"}))
		g.Expect(r.Labels).To(HaveKeyWithValue(controllers.DigestLabel, controllers.DigestLabelValue(digest)))
		g.Expect(r.Status.Summary).To(Equal(&securityv1alpha1.VulnerabilitySummary{Critical: 1, High: 1, Fixable: 2, Total: 2}))
		g.Expect(ids(r)).To(Equal([]string{"CVE-2026-1001", "CVE-2026-1002"}))
		g.Expect(r.Status.Scanner.Name).To(Equal("Trivy"))
		g.Expect(r.Status.VulnerabilityDB.Digest).To(HavePrefix("sha256:"))
		g.Expect(r.Status.OS.Family).To(Equal("alpine"))
		g.Expect(r.Status.ObservedGeneration).To(Equal(r.Generation))
		g.Expect(r.Status.LastScanTime).NotTo(BeNil())
	}
	// The pod controller writes the workloads apart from the scan: a report may be Ready first.
	g.Eventually(func(g Gomega) {
		g.Expect(report(g, "shared-a", "shared/app", digest).Status.Workloads).To(Equal([]securityv1alpha1.Workload{{Kind: "Pod", Name: "web", Containers: []string{"app"}}}))
		g.Expect(report(g, "shared-b", "shared/app", digest).Status.Workloads).To(Equal([]securityv1alpha1.Workload{{Kind: "Pod", Name: "worker", Containers: []string{"app", "migrate"}}}))
	}).WithTimeout(timeout).Should(Succeed())

	// GitOps tools read a Ready report as Current.
	raw := must(runtime.DefaultUnstructuredConverter.ToUnstructured(a))
	res, err := status.Compute(&unstructured.Unstructured{Object: raw})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Status).To(Equal(status.CurrentStatus))
}

func TestDeploymentPodsNameTheDeployment(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref, imageID, digest := testsuite.Push(t, reg, "team/web", testsuite.Image(t.Name()))
	namespace(g, "deploy")
	labels := map[string]string{"app": "web"}
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}},
	}
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "deploy"},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	g.Expect(env.Client.Create(ctx, deploy)).To(Succeed())
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-5d4f8", Namespace: "deploy", OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "Deployment", Name: deploy.Name, UID: deploy.UID, Controller: ptr.To(true),
		}}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	g.Expect(env.Client.Create(ctx, rs)).To(Succeed())
	createPod(g, "deploy", "web-5d4f8-abcde", ref, imageID, withOwner(rs, "ReplicaSet"))
	createPod(g, "deploy", "web-5d4f8-fghij", ref, imageID, withOwner(rs, "ReplicaSet"))

	g.Eventually(func(g Gomega) {
		r := report(g, "deploy", "team/web", digest)
		g.Expect(r.Status.Workloads).To(Equal([]securityv1alpha1.Workload{{Kind: "Deployment", Name: "web", Containers: []string{"app"}}}))
	}).WithTimeout(timeout).Should(Succeed())
}

func TestTagsAreResolvedWithoutAnImageID(t *testing.T) {
	g := NewWithT(t)
	ref, _, digest := testsuite.Push(t, reg, "pending/app", testsuite.Image(t.Name()))
	namespace(g, "pending")
	createPod(g, "pending", "starting", ref, "")
	r := readyReport(g, "pending", "pending/app", digest)
	g.Expect(r.Spec.Digest).To(Equal(digest))
}

func TestReportOfUnusedImageIsDeletedAfterRetention(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref, imageID, digest := testsuite.Push(t, reg, "gone/app", testsuite.Image(t.Name()))
	namespace(g, "gone")
	pod := createPod(g, "gone", "once", ref, imageID)
	r := readyReport(g, "gone", "gone/app", digest)

	g.Expect(env.Client.Delete(ctx, pod, client.GracePeriodSeconds(0))).To(Succeed())
	g.Eventually(func(g Gomega) {
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(r), &securityv1alpha1.ImageScanReport{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "report still there: %v", err)
	}).WithTimeout(timeout).Should(Succeed())
}

func TestPrivateImageNeedsItsPullSecret(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref, d := private.Push(t, "private/app", "1.0", testsuite.Image(t.Name()))
	digest := d.String()
	namespace(g, "private")
	createPod(g, "private", "secret-app", ref, private.Host()+"/private/app@"+digest)
	key := client.ObjectKey{Namespace: "private", Name: controllers.ReportName(private.Host()+"/private/app", digest)}

	g.Eventually(func(g Gomega) {
		r := &securityv1alpha1.ImageScanReport{}
		g.Expect(env.Client.Get(ctx, key, r)).To(Succeed())
		c := meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionScanned)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(Equal(securityv1alpha1.ReasonUnauthorized))
		g.Expect(c.Message).NotTo(ContainSubstring("s3cret"))
	}).WithTimeout(timeout).Should(Succeed())

	config := must(json.Marshal(map[string]any{"auths": map[string]any{private.Host(): map[string]string{"username": "puller", "password": "s3cret"}}}))
	g.Expect(env.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: "private"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: config},
	})).To(Succeed())
	g.Expect(env.Client.Create(ctx, &corev1.ServiceAccount{
		ObjectMeta:       metav1.ObjectMeta{Name: "default", Namespace: "private"},
		ImagePullSecrets: []corev1.LocalObjectReference{{Name: "regcred"}},
	})).To(Succeed())

	g.Eventually(func(g Gomega) {
		r := &securityv1alpha1.ImageScanReport{}
		g.Expect(env.Client.Get(ctx, key, r)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
		g.Expect(r.Status.Summary.Total).To(BeEquivalentTo(2))
	}).WithTimeout(2 * timeout).Should(Succeed())
}

func TestLongFindingListsAreCutToTheBound(t *testing.T) {
	g := NewWithT(t)
	var big []testutil.APKPackage
	for i := range bigPackages {
		big = append(big, testutil.APKPackage{Name: fmt.Sprintf("big%03d", i), Version: "1.0.0-r0"})
	}
	ref, imageID, digest := testsuite.Push(t, reg, "big/app", testsuite.Image(t.Name(), big...))
	namespace(g, "big")
	createPod(g, "big", "big", ref, imageID)
	r := readyReport(g, "big", "big/app", digest)

	raw := must(json.Marshal(r))
	g.Expect(len(raw)).To(BeNumerically("<=", reportMaxBytes))
	total := bigPackages + 2
	g.Expect(r.Status.Summary.Total).To(BeEquivalentTo(total))
	g.Expect(r.Status.Summary.Critical).To(BeEquivalentTo(bigPackages/4 + 1))
	g.Expect(r.Status.Vulnerabilities).NotTo(BeEmpty())
	g.Expect(len(r.Status.Vulnerabilities) + int(r.Status.VulnerabilitiesOmitted)).To(Equal(total))
	g.Expect(r.Status.VulnerabilitiesOmitted).To(BeNumerically(">", 0))
	// The most severe are kept.
	g.Expect(r.Status.Vulnerabilities[0].Severity).To(Equal(securityv1alpha1.SeverityCritical))
}

func TestDBUpdateRematchesWithoutPulling(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	refA, idA, digestA := testsuite.Push(t, reg, "update/with-zlib", testsuite.Image(t.Name()+"a", testutil.APKPackage{Name: "zlib", Version: "1.3.1-r2"}))
	refB, idB, digestB := testsuite.Push(t, reg, "update/without", testsuite.Image(t.Name()+"b"))
	namespace(g, "update")
	createPod(g, "update", "a", refA, idA)
	createPod(g, "update", "b", refB, idB)
	// An image no pod runs, scanned in the registry.
	_, registryOnly := reg.Push(t, "update/registry-only", "1.0.0", testsuite.Image(t.Name()+"r", testutil.APKPackage{Name: "zlib", Version: "1.3.1-r2"}))
	registryScan(t, g, "update", "registry", securityv1alpha1.RegistryScanSpec{Repositories: []string{reg.Host() + "/update/registry-only"}})
	readyReport(g, "update", "update/with-zlib", digestA)
	readyReport(g, "update", "update/without", digestB)
	readyScan(g, "update", "registry", timeout)
	readyReport(g, "update", "update/registry-only", registryOnly.String())
	// Ready may be written before the pod controller's status.workloads (when the scan wins the
	// race with the pod controller's first status write): wait for both.
	var before *securityv1alpha1.ImageScanReport
	g.Eventually(func(g Gomega) {
		before = report(g, "update", "update/without", digestB)
		g.Expect(before.Status.Workloads).NotTo(BeEmpty())
	}).WithTimeout(timeout).Should(Succeed())
	analyses := scan.Analyses()

	reg.PublishDB(t, dbRepo, "2", dbSpec(zlibAdvisory))
	g.Expect(db.Check(ctx)).To(BeTrue())
	newDB, _ := db.Info()
	reg.ResetCounts()

	g.Eventually(func(g Gomega) {
		a := report(g, "update", "update/with-zlib", digestA)
		g.Expect(ids(a)).To(ContainElement("CVE-2026-1003"))
		g.Expect(a.Status.VulnerabilityDB.Digest).To(Equal(newDB.Digest))
	}).WithTimeout(timeout).Should(Succeed())
	g.Eventually(func(g Gomega) {
		r := report(g, "update", "update/registry-only", registryOnly.String())
		g.Expect(ids(r)).To(ContainElement("CVE-2026-1003"))
		g.Expect(r.Status.VulnerabilityDB.Digest).To(Equal(newDB.Digest))
	}).WithTimeout(timeout).Should(Succeed())
	// Every report of the suite, the registry scan's too, was re-matched from its kept inventory:
	// no registry request at all.
	g.Consistently(func() int { return reg.Counts().Requests }).WithTimeout(3 * time.Second).Should(BeZero())
	g.Expect(scan.Analyses()).To(Equal(analyses))
	// The report whose findings did not change was not written.
	after := report(g, "update", "update/without", digestB)
	g.Expect(after.ResourceVersion).To(Equal(before.ResourceVersion), "written: %s", cmp.Diff(before, after))

	// An Event on the changed report tells its new counts, with the condition's reason.
	nameA := controllers.ReportName(reg.Host()+"/update/with-zlib", digestA)
	g.Eventually(func(g Gomega) {
		list := &eventsv1.EventList{}
		g.Expect(env.Client.List(ctx, list, client.InNamespace("update"))).To(Succeed())
		var notes []string
		for _, e := range list.Items {
			if e.Regarding.Name == nameA && e.Reason == securityv1alpha1.ReasonScanSucceeded {
				notes = append(notes, e.Note)
			}
		}
		g.Expect(notes).To(ContainElement(ContainSubstring("3 vulnerabilities: 1 critical, 2 high")))
	}).WithTimeout(timeout).Should(Succeed())
}

func TestSteadyStateWritesNothing(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref, imageID, digest := testsuite.Push(t, reg, "steady/app", testsuite.Image(t.Name()))
	namespace(g, "steady")
	createPod(g, "steady", "one", ref, imageID)
	createPod(g, "steady", "two", ref, imageID)
	readyReport(g, "steady", "steady/app", digest)
	time.Sleep(2 * time.Second) // let the last events settle

	snapshot := func() map[string]string {
		list := &securityv1alpha1.ImageScanReportList{}
		g.Expect(env.Client.List(ctx, list)).To(Succeed())
		rv := map[string]string{}
		for _, r := range list.Items {
			rv[r.Namespace+"/"+r.Name] = r.ResourceVersion
		}
		return rv
	}
	first := snapshot()
	// A pod update that changes nothing the reports hold: a resync-like event.
	pod := &corev1.Pod{}
	g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: "steady", Name: "one"}, pod)).To(Succeed())
	pod.Labels = map[string]string{"touched": "yes"}
	g.Expect(env.Client.Update(ctx, pod)).To(Succeed())
	g.Consistently(snapshot).WithTimeout(time.Minute).WithPolling(2 * time.Second).Should(Equal(first))
}

func TestMetrics(t *testing.T) {
	g := NewWithT(t)
	ref, imageID, digest := testsuite.Push(t, reg, "metrics/app", testsuite.Image(t.Name()))
	namespace(g, "metrics")
	createPod(g, "metrics", "app", ref, imageID)
	r := readyReport(g, "metrics", "metrics/app", digest)

	g.Eventually(func() float64 {
		return promtestutil.ToFloat64(metrics.ImageVulnerabilities.WithLabelValues("metrics", r.Name, "critical"))
	}).Should(Equal(1.0))
	g.Expect(promtestutil.ToFloat64(metrics.ImageVulnerabilities.WithLabelValues("metrics", r.Name, "high"))).To(Equal(1.0))
	g.Expect(promtestutil.ToFloat64(metrics.ScansTotal.WithLabelValues(metrics.KindAnalysis, "success"))).To(BeNumerically(">=", 1))
	g.Expect(promtestutil.ToFloat64(metrics.ScansTotal.WithLabelValues(metrics.KindMatch, "success"))).To(BeNumerically(">=", 1))

	families, err := ctrlmetrics.Registry.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	var dbTime float64
	for _, f := range families {
		if f.GetName() == "imageguard_vulnerability_db_updated_timestamp_seconds" {
			dbTime = f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	info, _ := db.Info()
	g.Expect(dbTime).To(Equal(float64(info.UpdatedAt.Unix())))
}

func TestExcludedNamespacesAreNotReported(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref, imageID, digest := testsuite.Push(t, reg, "excluded/app", testsuite.Image(t.Name()))
	g.Expect(env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "opted-out", Labels: map[string]string{controllers.ExcludeLabel: "true"},
	}})).To(Succeed())
	g.Expect(env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}})).To(Or(Succeed(), MatchError(ContainSubstring("already exists"))))
	createPod(g, "opted-out", "app", ref, imageID)
	createPod(g, "kube-system", "app", ref, imageID)
	// A control namespace shows the pods were seen.
	namespace(g, "opted-in")
	createPod(g, "opted-in", "app", ref, imageID)
	readyReport(g, "opted-in", "excluded/app", digest)

	for _, ns := range []string{"opted-out", "kube-system"} {
		list := &securityv1alpha1.ImageScanReportList{}
		g.Expect(env.Client.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		g.Expect(list.Items).To(BeEmpty(), "namespace %s", ns)
	}
}

// TestDecoyDigestDoesNotBlockTheRealReport: a pod that runs a digest sharing the first 12 hex of
// another image's digest holds that image's report name first; the real image's report is made
// under its longer name, and scanned.
func TestDecoyDigestDoesNotBlockTheRealReport(t *testing.T) {
	g := NewWithT(t)
	ns := "decoy"
	namespace(g, ns)
	ref, imageID, digest := testsuite.Push(t, reg, "decoy/app", testsuite.Image(t.Name()))
	decoy := digest[:len("sha256:")+12] + strings.Repeat("0", 52)
	if decoy == digest {
		decoy = digest[:len("sha256:")+12] + strings.Repeat("1", 52)
	}
	createPod(g, ns, "decoy", reg.Host()+"/decoy/app@"+decoy, reg.Host()+"/decoy/app@"+decoy)
	first := controllers.ReportNames(reg.Host()+"/decoy/app", digest, "")[0]
	g.Eventually(func(g Gomega) {
		r := &securityv1alpha1.ImageScanReport{}
		g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: first}, r)).To(Succeed())
		g.Expect(r.Spec.Digest).To(Equal(decoy))
	}).WithTimeout(timeout).Should(Succeed())

	createPod(g, ns, "real", ref, imageID)
	second := controllers.ReportNames(reg.Host()+"/decoy/app", digest, "")[1]
	g.Expect(second).NotTo(Equal(first))
	g.Eventually(func(g Gomega) {
		r := &securityv1alpha1.ImageScanReport{}
		g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: second}, r)).To(Succeed())
		g.Expect(r.Spec.Digest).To(Equal(digest))
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
		g.Expect(r.Status.Summary.Critical).To(BeEquivalentTo(1))
	}).WithTimeout(timeout).Should(Succeed())
}

// TestUpperCaseHostsGetAReport: an image named with an upper-case host is the same image as in
// lower case: its report is made under the canonical name, and scanned.
func TestUpperCaseHostsGetAReport(t *testing.T) {
	g := NewWithT(t)
	ns := "upper-case"
	namespace(g, ns)
	_, _, digest := testsuite.Push(t, reg, "upper/app", testsuite.Image(t.Name()))
	port := reg.Host()[strings.LastIndex(reg.Host(), ":"):]
	spelled := "LOCALHOST" + port + "/upper/app"
	createPod(g, ns, "upper", spelled+":1.0", spelled+"@"+digest)
	canonical := "localhost" + port + "/upper/app"
	g.Eventually(func(g Gomega) {
		r := &securityv1alpha1.ImageScanReport{}
		g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: controllers.ReportName(canonical, digest)}, r)).To(Succeed())
		g.Expect(r.Spec.Image).To(Equal(canonical))
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue(), "%v", r.Status.Conditions)
		g.Expect(r.Status.Summary.Critical).To(BeEquivalentTo(1))
	}).WithTimeout(timeout).Should(Succeed())
}
