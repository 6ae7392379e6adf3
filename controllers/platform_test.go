package controllers_test

import (
	"context"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
