package integrity

// Attacks an adversarial review of admission found, against the real API server and
// kube-controller-manager: each worked once, and each test fails if it works again.

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// An image volume mounts an OCI image: it is judged like a container's, so a pod whose only
// container is trusted does not get the content of evil.example.com/payload:1.
func TestAttackImageVolume(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "adv-image-volume"
	judgedNamespace(g, ns, securityv1alpha1.PolicyRules{
		Registries: &securityv1alpha1.RegistryRule{Allowed: []string{suite.Registry.Host() + "/**"}},
	})
	ref, _, _ := testsuite.Push(t, suite.Registry, "adv/busybox", testsuite.ImageOf(t.Name(), testutil.APKPackage{Name: "advbusybox", Version: "1.0.0-r0"}))
	// The control: the same image as a container is refused.
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "control", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "evil.example.com/payload:1"}}}}
	g.Expect(suite.Env.Client.Create(ctx, bare)).To(MatchError(ContainSubstring("registries")))

	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "volume", Namespace: ns}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "app", Image: ref, Command: []string{"/payload/bin/run"},
			VolumeMounts: []corev1.VolumeMount{{Name: "payload", MountPath: "/payload"}}}},
		Volumes: []corev1.Volume{{Name: "payload", VolumeSource: corev1.VolumeSource{
			Image: &corev1.ImageVolumeSource{Reference: "evil.example.com/payload:1", PullPolicy: corev1.PullAlways}}}},
	}}
	err := suite.Env.Client.Create(ctx, pod)
	g.Expect(err).To(HaveOccurred(), "the API server stored a pod mounting evil.example.com/payload:1")
}

// A policy that selects tier=prod workloads selects a Deployment whose template alone carries the
// label (its pods will): else the ReplicaSet and pods made from it, which carry the label, would be
// "not judged again".
func TestAttackLabelOnlyOnTheTemplate(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "adv-labels"
	g.Expect(suite.Env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns, Labels: map[string]string{admissionLabel: "true"}}})).To(Succeed())
	p := &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "prod", Namespace: ns},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce,
			Match: securityv1alpha1.ImageMatch{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "prod"}}},
			Rules: securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{suite.Registry.Host() + "/**"}}}},
	}
	g.Expect(suite.Env.Client.Create(ctx, p)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKeyFromObject(p), p)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(p.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
	}).WithTimeout(timeout).Should(Succeed())
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bare", Namespace: ns, Labels: map[string]string{"tier": "prod"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "evil.example.com/web:1"}}}}
	g.Expect(suite.Env.Client.Create(ctx, bare)).To(MatchError(ContainSubstring("registries")))

	_, stderr, err := kubectl(fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: %s}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: prod}}
    spec:
      containers: [{name: app, image: "evil.example.com/web:1"}]
`, ns), "apply", "-f", "-")
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("ImagePolicy/adv-labels/prod: evil.example.com/web:1: registries"))
}

// A StatefulSet with a partition recreates its pods below the partition from the current
// revision: their images are not the StatefulSet's template, but the revision's. They are not
// judged again, so a new critical finding does not stop the StatefulSet controller from replacing
// a deleted (drained) pod.
func TestAttackStatefulSetPartition(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "adv-partition"
	judgedNamespace(g, ns, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		OnUnscanned:     securityv1alpha1.UnscannedDeny,
	})
	oldRef, _, oldDigest := testsuite.Push(t, suite.Registry, "adv/db", testsuite.ImageOf(t.Name()+"-old", testutil.APKPackage{Name: "advstsold", Version: "1.0.0-r0"}))
	newRef, _, newDigest := testsuite.Push(t, suite.Registry, "adv/db-next", testsuite.ImageOf(t.Name()+"-new", testutil.APKPackage{Name: "advstsnew", Version: "1.0.0-r0"}))
	sts := func(image string) string {
		return fmt.Sprintf(`apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: %s}
spec:
  replicas: 2
  podManagementPolicy: Parallel
  serviceName: db
  selector: {matchLabels: {app: db}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {partition: 2}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: "%s"}]
`, ns, image)
	}
	apply := func(m string) error { _, _, err := kubectl(m, "apply", "-f", "-"); return err }
	_ = apply(sts(oldRef)) // queues the scan
	reportOf(g, ns, suite.Registry.Host()+"/adv/db", oldDigest, scanned)
	g.Eventually(func() error { return apply(sts(oldRef)) }).WithTimeout(timeout).Should(Succeed())
	g.Eventually(func(g Gomega) {
		list := &corev1.PodList{}
		g.Expect(suite.Env.Client.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		g.Expect(list.Items).To(HaveLen(2))
	}).WithTimeout(timeout).Should(Succeed())
	// A canary of the next version: the template changes, the partition keeps both pods on the old.
	_ = apply(sts(newRef))
	reportOf(g, ns, suite.Registry.Host()+"/adv/db-next", newDigest, scanned)
	g.Eventually(func() error { return apply(sts(newRef)) }).WithTimeout(timeout).Should(Succeed())

	// Control: a deleted pod is made again while the old version is clean.
	g.Expect(suite.Env.Client.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db-1", Namespace: ns}})).To(Succeed())
	g.Eventually(func(g Gomega) {
		pod := &corev1.Pod{}
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "db-1"}, pod)).To(Succeed())
		g.Expect(pod.DeletionTimestamp).To(BeNil())
		g.Expect(pod.Spec.Containers[0].Image).To(Equal(oldRef), "made from the current revision, not the template")
	}).WithTimeout(30*time.Second).Should(Succeed(), "control: db-1 was not made again; events: %s", events(ns))

	// The old version gets a critical finding.
	suite.Registry.PublishDB(t, testsuite.DBRepository, "2", dbSpec(testutil.AdvisorySpec{
		ID: "CVE-2026-7101", Ecosystem: "alpine 3.22", Package: "advstsold", FixedVersion: "1.0.1-r0", Severity: "CRITICAL",
	}))
	_, err := suite.DB.Check(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	_ = err
	reportOf(g, ns, suite.Registry.Host()+"/adv/db", oldDigest, func(r *securityv1alpha1.ImageScanReport) bool {
		return r.Status.Summary != nil && r.Status.Summary.Critical == 1
	})

	// A node drain: pod db-0 is deleted; the StatefulSet controller must make it again.
	g.Expect(suite.Env.Client.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: ns}})).To(Succeed())
	g.Eventually(func(g Gomega) {
		pod := &corev1.Pod{}
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "db-0"}, pod)).To(Succeed())
		g.Expect(pod.DeletionTimestamp).To(BeNil())
	}).WithTimeout(30*time.Second).Should(Succeed(), "db-0 was not made again; events: %s\nkube-controller-manager: %s", events(ns), kcmLines("db-0"))
}

func events(ns string) string {
	list := &corev1.EventList{}
	_ = suite.Env.Client.List(context.Background(), list, client.InNamespace(ns))
	var out []string
	for _, e := range list.Items {
		out = append(out, e.Reason+": "+e.Message)
	}
	return strings.Join(out, "\n")
}

// Dry-run pods whose containers name distinct, long references: the webhook keeps each lookup's
// failure for 30 s, with no bound on their number or size. ImageGuard runs in this process.
func TestAttackDigestCacheThroughTheAPIServer(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "adv-memory"
	judgedNamespace(g, ns, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
	})
	// An 8 KB host (url.Parse accepts it) is refused as malformed, briefly: no runtime pulls it.
	long := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "long", Namespace: ns}, Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "app", Image: strings.Repeat("a", 60) + "." + strings.Repeat("b", 8000) + ".example.com/app:1"}}}}
	err := suite.Env.Client.Create(ctx, long, client.DryRunAll)
	g.Expect(err).To(MatchError(ContainSubstring("malformed image reference")))
	g.Expect(len(err.Error())).To(BeNumerically("<", 1024))
	host := strings.Repeat("a", 60) + "." + strings.Repeat("b", 170) + ".example.com" // the longest name the grammar takes
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const requests, perPod = 20, 300
	start := time.Now()
	for n := range requests {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("p", n), Namespace: ns}}
		for i := range perPod {
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: fmt.Sprintf("%s/app:%d-%d", host, n, i)})
		}
		g.Expect(suite.Env.Client.Create(ctx, pod, client.DryRunAll)).To(Succeed())
	}
	elapsed := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	retained := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d dry-run pods of %d containers (%d-byte hosts) in %s: heap grew by %d MB", requests, perPod, len(host), elapsed.Round(time.Millisecond), retained>>20)
	g.Expect(retained).To(BeNumerically("<", 16<<20))
}

func kcmLines(word string) string {
	var out []string
	for _, l := range strings.Split(suite.Env.ControllerManagerLog(), "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	if len(out) > 5 {
		out = out[len(out)-5:]
	}
	return strings.Join(out, "\n")
}

// An ephemeral container added through pods/ephemeralcontainers is judged.
func TestAttackEphemeralContainer(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "adv-ephemeral"
	judgedNamespace(g, ns, securityv1alpha1.PolicyRules{
		Registries: &securityv1alpha1.RegistryRule{Allowed: []string{suite.Registry.Host() + "/**"}},
	})
	ref, _, _ := testsuite.Push(t, suite.Registry, "adv/eph", testsuite.ImageOf(t.Name(), testutil.APKPackage{Name: "adveph", Version: "1.0.0-r0"}))
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}}}
	g.Expect(suite.Env.Client.Create(ctx, pod)).To(Succeed())
	pod.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name: "debug", Image: "evil.example.com/debug:1"}}}
	err := suite.Env.Client.SubResource("ephemeralcontainers").Update(ctx, pod)
	g.Expect(err).To(MatchError(ContainSubstring("evil.example.com/debug:1: registries")))
}

// Under onUnscanned: Allow, a tag whose digest is known critical is refused while it resolves. A
// dry run naming it among 200 tags of a registry that never answers leaves it "not asked" (64
// lookups at most in flight), and that failure is kept 30 s: the real pod, alone, is admitted.
func TestAttackStarvedLookup(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	rules := securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		OnUnscanned:     securityv1alpha1.UnscannedAllow,
	}
	judgedNamespace(g, "adv-elsewhere", rules)
	judgedNamespace(g, "adv-attacker", rules)
	judgedNamespace(g, "adv-control", rules)
	hung, _ := hungRegistry(t)
	ref, _, digest := testsuite.Push(t, suite.Registry, "adv/old", testsuite.Image(t.Name())) // libcrypto3: 1 critical
	pod := func(ns, name string, containers ...corev1.Container) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.PodSpec{Containers: containers}}
	}
	target := corev1.Container{Name: "app", Image: ref}
	// Someone ran it elsewhere: scanned, critical.
	g.Expect(suite.Env.Client.Create(ctx, pod("adv-elsewhere", "first", target))).To(Succeed())
	reportOf(g, "adv-elsewhere", suite.Registry.Host()+"/adv/old", digest, func(r *securityv1alpha1.ImageScanReport) bool {
		return scanned(r) && r.Status.Summary.Critical >= 1
	})
	// The control: in a namespace where it never ran, the tag is refused (its digest's report is
	// found in any namespace). (Not in the attacker's: that answer would be kept 5 minutes.)
	g.Eventually(func() error {
		return suite.Env.Client.Create(ctx, pod("adv-control", "control", target), client.DryRunAll)
	}).
		WithTimeout(timeout).Should(MatchError(ContainSubstring("critical (max 0)")))

	p := pod("adv-attacker", "poison")
	for i := range 200 {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: fmt.Sprintf("%s/x/y:%d", hung, i)})
		if i == 100 {
			p.Spec.Containers = append(p.Spec.Containers, target)
		}
	}
	start := time.Now()
	err := suite.Env.Client.Create(ctx, p, client.DryRunAll)
	t.Logf("dry run (%s): %.200v", time.Since(start).Round(time.Millisecond), err)
	err = suite.Env.Client.Create(ctx, pod("adv-attacker", "real", target))
	g.Expect(err).To(HaveOccurred(), "%s (digest %s, 1 critical known) admitted", ref, digest)
}

// The validating webhook reads at most 7 MiB of AdmissionReview. The API server sends the object
// as JSON, escaping '<' as \u003c: 6 bytes for each byte the client sent and etcd stores. A pod of
// 1.3 MB (under etcd's 1.5 MiB) makes a review of 7.8 MB. Unread, it used to get an answer with no
// UID, which the API server counts as a failed call: failurePolicy Ignore (the chart's default)
// admitted the pod unjudged. Now such a review is refused where a policy enforces.
func TestAttackOversizedReview(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "adv-oversized"
	judgedNamespace(g, ns, securityv1alpha1.PolicyRules{
		Registries: &securityv1alpha1.RegistryRule{Allowed: []string{suite.Registry.Host() + "/**"}},
	})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "big", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "evil.example.com/web:1"}}}}
	g.Expect(suite.Env.Client.Create(ctx, pod.DeepCopy())).To(MatchError(ContainSubstring("registries")), "the control")
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PAD", Value: strings.Repeat("<", 1300000)}}
	g.Expect(suite.Env.Client.Create(ctx, pod)).To(MatchError(ContainSubstring("larger than")))
	// The same in a Deployment: refused too, so no ReplicaSet or pod ever comes of it.
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To[int32](2),
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}}, Spec: pod.Spec},
	}}
	g.Expect(suite.Env.Client.Create(ctx, dep)).To(MatchError(ContainSubstring("larger than")))
	// Where no policy enforces, the same pod is admitted (with a Warning): nothing stands in the
	// way of the cluster's objects there.
	free := "adv-oversized-free"
	g.Expect(suite.Env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: free, Labels: map[string]string{admissionLabel: "true"},
	}})).To(Succeed())
	pod.Namespace = free
	g.Expect(suite.Env.Client.Create(ctx, pod)).To(Succeed())
}

// A pod of very many containers is judged within the budget, whatever its size: refused.
func TestAttackManyContainers(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "adv-many"
	judgedNamespace(g, ns, securityv1alpha1.PolicyRules{
		Registries: &securityv1alpha1.RegistryRule{Allowed: []string{suite.Registry.Host() + "/**"}},
	})
	for _, n := range []int{5000, 15000, 25000} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("many-", n), Namespace: ns}}
		for i := range n {
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: fmt.Sprintf("e.io/xx:%d", i)})
		}
		err := suite.Env.Client.Create(ctx, pod, client.DryRunAll)
		g.Expect(err).To(HaveOccurred(), "%d containers", n)
		g.Expect(apierrors.IsForbidden(err) || strings.Contains(err.Error(), "larger than")).To(BeTrue(), "%d containers: %.300v", n, err)
	}
}
