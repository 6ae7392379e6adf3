package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// node creates a node whose kubelet reports osName/arch, as a kubelet does at registration.
func node(t *testing.T, g Gomega, name, osName, arch string) {
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	g.Expect(env.Client.Create(ctx, n)).To(Succeed())
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), n) })
	n.Status.NodeInfo = corev1.NodeSystemInfo{OperatingSystem: osName, Architecture: arch}
	g.Expect(env.Client.Status().Update(ctx, n)).To(Succeed())
}

func onNode(name string) podOption {
	return func(p *corev1.Pod) { p.Spec.NodeName = name }
}

// An index digest run on an amd64 node and an arm64 node gives two reports, each with the
// findings of its platform's image and naming that platform.
func TestIndexDigestOnTwoArchitecturesGivesTwoReports(t *testing.T) {
	g := NewWithT(t)
	amd := testsuite.Image(t.Name())
	// The arm64 image has the old busybox only: one finding, not the amd64 image's two.
	base := must(testutil.AlpineImage("3.22.1", []testutil.APKPackage{{Name: "busybox", Version: "1.37.0-r18", Arch: "aarch64"}}))
	layers := must(base.Layers())
	marker := must(testutil.LayerFromFiles(map[string][]byte{"etc/test-id": []byte(t.Name() + "-arm64")}))
	arm := must(testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: "arm64"}, append(layers, marker)...))
	_, indexDigest := reg.PushIndex(t, "multi/app", "1.0", must(testutil.IndexFromImages(amd, arm)))
	digest := indexDigest.String()
	ref := reg.Host() + "/multi/app:1.0"
	imageID := reg.Host() + "/multi/app@" + digest

	node(t, g, "platform-amd64", "linux", "amd64")
	node(t, g, "platform-arm64", "linux", "arm64")
	ns := "platforms"
	namespace(g, ns)
	before := scan.Analyses()
	createPod(g, ns, "on-amd64", ref, imageID, onNode("platform-amd64"))
	createPod(g, ns, "on-arm64", ref, imageID, onNode("platform-arm64"))

	repo := reg.Host() + "/multi/app"
	ready := func(g Gomega, platform string) *securityv1alpha1.ImageScanReport {
		r := &securityv1alpha1.ImageScanReport{}
		key := client.ObjectKey{Namespace: ns, Name: controllers.ReportNames(repo, digest, platform)[0]}
		g.Expect(env.Client.Get(context.Background(), key, r)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue(), "conditions: %v", r.Status.Conditions)
		return r
	}
	var amdReport, armReport *securityv1alpha1.ImageScanReport
	g.Eventually(func(g Gomega) {
		amdReport, armReport = ready(g, ""), ready(g, "linux/arm64")
	}).WithTimeout(timeout).Should(Succeed())

	g.Expect(amdReport.Spec.Digest).To(Equal(digest))
	g.Expect(amdReport.Spec.Platform).To(BeEmpty(), "the default platform is not spelled out")
	g.Expect(amdReport.Status.Platform).To(Equal("linux/amd64"))
	g.Expect(ids(amdReport)).To(Equal([]string{"CVE-2026-1001", "CVE-2026-1002"}))
	g.Expect(armReport.Spec.Digest).To(Equal(digest))
	g.Expect(armReport.Spec.Platform).To(Equal("linux/arm64"))
	g.Expect(armReport.Status.Platform).To(Equal("linux/arm64"))
	g.Expect(ids(armReport)).To(Equal([]string{"CVE-2026-1002"}))
	g.Expect(armReport.Name).To(HaveSuffix("-arm64"))
	g.Expect(scan.Analyses()-before).To(BeEquivalentTo(2), "one analysis per platform image")
	g.Eventually(func(g Gomega) {
		g.Expect(ready(g, "").Status.Workloads).To(Equal([]securityv1alpha1.Workload{{Kind: "Pod", Name: "on-amd64", Containers: []string{"app"}}}))
		g.Expect(ready(g, "linux/arm64").Status.Workloads).To(Equal([]securityv1alpha1.Workload{{Kind: "Pod", Name: "on-arm64", Containers: []string{"app"}}}))
	}).WithTimeout(timeout).Should(Succeed())

	// kubectl -o wide shows the platform column.
	out, err := env.RunKubectl(context.Background(), "get", "imagescanreports", "-n", ns, "-o", "wide")
	g.Expect(err).NotTo(HaveOccurred(), out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	g.Expect(lines[0]).To(ContainSubstring("PLATFORM"))
	g.Expect(out).To(And(ContainSubstring("linux/amd64"), ContainSubstring("linux/arm64")))

	// The arm64 pod goes: its report is deleted after the retention, the amd64 one stays.
	g.Expect(env.Client.Delete(context.Background(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "on-arm64"}}, client.GracePeriodSeconds(0))).To(Succeed())
	g.Eventually(func(g Gomega) {
		err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(armReport), &securityv1alpha1.ImageScanReport{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "arm64 report still there: %v", err)
	}).WithTimeout(timeout).Should(Succeed())
	g.Expect(ready(g, "").Status.Workloads).To(HaveLen(1))
}

// A pod that may run on any node is judged, at admission, on a scanned report of its index
// digest for every platform the cluster's nodes have and the index has an image for: scanned on
// amd64 only, it is not scanned yet for arm64, and the refused request makes that report.
func TestAdmissionAsksForEveryNodePlatformOfAnIndex(t *testing.T) {
	g := NewWithT(t)
	amd := testsuite.Image(t.Name())
	arm := must(testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: "arm64"},
		must(testutil.LayerFromFiles(map[string][]byte{"etc/test-id": []byte(t.Name() + "-arm64")}))))
	_, indexDigest := reg.PushIndex(t, "gap/app", "1.0", must(testutil.IndexFromImages(amd, arm)))
	digest := indexDigest.String()
	ref := reg.Host() + "/gap/app@" + digest
	node(t, g, "gap-amd64", "linux", "amd64")
	node(t, g, "gap-arm64", "linux", "arm64")
	node(t, g, "gap-windows", "windows", "amd64") // the index has no image for it: no report asked
	ns := "adm-platforms"
	admissionNamespace(g, ns)
	imagePolicy(g, ns, "scanned-only", securityv1alpha1.EnforcementEnforce, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](5)},
		OnUnscanned:     securityv1alpha1.UnscannedDeny,
	})
	deployment := func(name, nodeSelector string) string {
		return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  selector: {matchLabels: {app: %[2]s}}
  template:
    metadata: {labels: {app: %[2]s}}
    spec:
      nodeSelector: {%[4]s}
      containers: [{name: app, image: "%[3]s"}]
`, ns, name, ref, nodeSelector)
	}

	// On amd64 nodes only: refused until the amd64 report is scanned, then admitted.
	_, stderr, err := kubectlApply(deployment("on-amd64", `kubernetes.io/arch: amd64`))
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("not scanned yet (onUnscanned: Deny)"))
	g.Eventually(func() error {
		_, _, err := kubectlApply(deployment("on-amd64", `kubernetes.io/arch: amd64`))
		return err
	}).WithTimeout(timeout).Should(Succeed())
	repo := reg.Host() + "/gap/app"
	amdReport := &securityv1alpha1.ImageScanReport{}
	g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: controllers.ReportNames(repo, digest, "")[0]}, amdReport)).To(Succeed())
	g.Expect(amdReport.Status.ImageDigest).To(Equal(must(amd.Digest()).String()))
	g.Expect(amdReport.Status.IndexPlatforms).To(Equal([]string{"linux/amd64", "linux/arm64"}))
	armKey := client.ObjectKey{Namespace: ns, Name: controllers.ReportNames(repo, digest, "linux/arm64")[0]}
	g.Expect(env.Client.Get(context.Background(), armKey, &securityv1alpha1.ImageScanReport{})).NotTo(Succeed(), "no arm64 report yet")

	// Anywhere: the arm64 nodes would run the arm64 image, not scanned yet.
	_, stderr, err = kubectlApply(deployment("anywhere", ""))
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("not scanned yet for linux/arm64 (onUnscanned: Deny)"))
	g.Expect(stderr).NotTo(ContainSubstring("windows"))
	// The refusal queued the arm64 report; once scanned, the same Deployment is admitted.
	g.Eventually(func() error {
		_, _, err := kubectlApply(deployment("anywhere", ""))
		return err
	}).WithTimeout(timeout).Should(Succeed())
	armReport := &securityv1alpha1.ImageScanReport{}
	g.Expect(env.Client.Get(context.Background(), armKey, armReport)).To(Succeed())
	g.Expect(armReport.Spec.Platform).To(Equal("linux/arm64"))
	g.Expect(armReport.Status.ImageDigest).To(Equal(must(arm.Digest()).String()))
	g.Expect(meta.IsStatusConditionTrue(armReport.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())

	// An image manifest is the same image on every node: one report judges it anywhere.
	single, _, singleDigest := testsuite.Push(t, reg, "gap/single", testsuite.Image(t.Name()+"-single"))
	_, _, err = kubectlApply(deploymentYAML(ns, "single", single))
	g.Expect(err).To(HaveOccurred(), "not scanned at all yet")
	singleReport := readyReport(g, ns, "gap/single", singleDigest)
	g.Expect(singleReport.Status.ImageDigest).To(Equal(singleDigest))
	g.Expect(singleReport.Status.IndexPlatforms).To(BeEmpty())
	g.Eventually(func() error {
		_, _, err := kubectlApply(deploymentYAML(ns, "single", single))
		return err
	}).WithTimeout(timeout).Should(Succeed())
}
