package integrity

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// podsOf lists the live pods of ns that owner controls.
func podsOf(g Gomega, ns string, owner k8stypes.UID) []corev1.Pod {
	list := &corev1.PodList{}
	g.Expect(suite.Env.Client.List(context.Background(), list, client.InNamespace(ns))).To(Succeed())
	var out []corev1.Pod
	for _, p := range list.Items {
		if ref := metav1.GetControllerOf(&p); ref != nil && ref.UID == owner && p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

// TestControllersKeepRunningWhatWasAdmitted: once a new DB gives an admitted Deployment's image a
// critical finding, its ReplicaSet still scales, rolls out and replaces deleted pods, and its
// CronJob still runs; a bare pod, or one with a forged owner and another image, is refused.
func TestControllersKeepRunningWhatWasAdmitted(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "keep-running"
	judgedNamespace(g, ns, securityv1alpha1.PolicyRules{
		Registries:      &securityv1alpha1.RegistryRule{Allowed: []string{suite.Registry.Host() + "/**"}},
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		OnUnscanned:     securityv1alpha1.UnscannedDeny,
	})
	ref, _, digest := testsuite.Push(t, suite.Registry, "keep/web", testsuite.ImageOf(t.Name(), testutil.APKPackage{Name: "scaleme", Version: "1.0.0-r0"}))
	deployment := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: "%[2]s"}]
`, ns, ref)
	// Never scanned: refused, and the scan starts; once scanned and clean, admitted.
	_, stderr, err := kubectl(deployment, "apply", "-f", "-")
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("not scanned yet (onUnscanned: Deny)"))
	reportOf(g, ns, suite.Registry.Host()+"/keep/web", digest, scanned)
	g.Eventually(func() error { _, _, err := kubectl(deployment, "apply", "-f", "-"); return err }).WithTimeout(timeout).Should(Succeed())
	_, stderr, err = kubectl(fmt.Sprintf(`apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: %[1]s}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: job, image: "%[2]s"}]
`, ns, ref), "apply", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred(), stderr)

	// The controller manager makes the ReplicaSet and its pod: admitted.
	d := &appsv1.Deployment{}
	rs := &appsv1.ReplicaSet{}
	g.Eventually(func(g Gomega) {
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "web"}, d)).To(Succeed())
		list := &appsv1.ReplicaSetList{}
		g.Expect(suite.Env.Client.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		g.Expect(list.Items).To(HaveLen(1))
		*rs = list.Items[0]
		g.Expect(podsOf(g, ns, rs.UID)).To(HaveLen(1))
	}).WithTimeout(timeout).Should(Succeed())

	// A new DB: the image has a critical finding now.
	suite.Registry.PublishDB(t, testsuite.DBRepository, "2", dbSpec(testutil.AdvisorySpec{
		ID: "CVE-2026-7001", Ecosystem: "alpine 3.22", Package: "scaleme", FixedVersion: "1.0.1-r0", Severity: "CRITICAL",
	}))
	_, err = suite.DB.Check(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	reportOf(g, ns, suite.Registry.Host()+"/keep/web", digest, func(r *securityv1alpha1.ImageScanReport) bool {
		return r.Status.Summary != nil && r.Status.Summary.Critical == 1
	})
	criticalSince := time.Now()

	// A bare pod of the image is refused, once the webhook's cache has the report the API server
	// just served (on a busy machine that takes a moment; a pod admitted meanwhile is removed).
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bare", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}}}
	g.Eventually(func(g Gomega) {
		pod := bare.DeepCopy()
		err := suite.Env.Client.Create(ctx, pod)
		if err == nil {
			_ = suite.Env.Client.Delete(ctx, pod, client.GracePeriodSeconds(0))
			g.Eventually(func() bool {
				return apierrors.IsNotFound(suite.Env.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod))
			}).Should(BeTrue())
		}
		g.Expect(err).To(MatchError(ContainSubstring("vulnerabilities: 1 critical (max 0)")))
	}).WithTimeout(timeout).Should(Succeed())

	// Scaling: three pods.
	_, stderr, err = kubectl("", "scale", "deployment/web", "-n", ns, "--replicas=3")
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	g.Eventually(func(g Gomega) { g.Expect(podsOf(g, ns, rs.UID)).To(HaveLen(3)) }).WithTimeout(timeout).Should(Succeed())

	// A rollout: a new ReplicaSet, and its pod.
	_, stderr, err = kubectl("", "rollout", "restart", "deployment/web", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	g.Eventually(func(g Gomega) {
		list := &appsv1.ReplicaSetList{}
		g.Expect(suite.Env.Client.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		g.Expect(list.Items).To(HaveLen(2))
		for _, other := range list.Items {
			if other.UID != rs.UID {
				g.Expect(podsOf(g, ns, other.UID)).NotTo(BeEmpty())
			}
		}
	}).WithTimeout(timeout).Should(Succeed())

	// A deleted pod is replaced.
	pods := podsOf(g, ns, rs.UID)
	g.Expect(suite.Env.Client.Delete(ctx, &pods[0])).To(Succeed())
	g.Eventually(func(g Gomega) {
		now := podsOf(g, ns, rs.UID)
		g.Expect(now).To(HaveLen(3))
		g.Expect(now).NotTo(ContainElement(HaveField("UID", pods[0].UID)))
	}).WithTimeout(timeout).Should(Succeed())

	// A pod that names the ReplicaSet as its owner, made by someone else with another image:
	// judged as a bare pod, refused.
	otherRef, _, _ := testsuite.Push(t, suite.Registry, "keep/other", testsuite.Image(t.Name()+"-other"))
	forged := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "forged", Namespace: ns, Labels: map[string]string{"app": "web-forged"}, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: ptr.To(true),
		}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: otherRef}}},
	}
	err = suite.Env.Client.Create(ctx, forged)
	g.Expect(err).To(HaveOccurred())
	g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)

	// The CronJob runs on schedule: a Job made after the critical appeared, and its pod.
	g.Eventually(func(g Gomega) {
		jobs := &batchv1.JobList{}
		g.Expect(suite.Env.Client.List(ctx, jobs, client.InNamespace(ns))).To(Succeed())
		var ran bool
		for _, j := range jobs.Items {
			if j.CreationTimestamp.After(criticalSince) && len(podsOf(g, ns, j.UID)) > 0 {
				ran = true
			}
		}
		g.Expect(ran).To(BeTrue(), "no Job with a pod since the critical finding")
	}).WithTimeout(2 * time.Minute).WithPolling(2 * time.Second).Should(Succeed())
}

// hungRegistry accepts TCP connections and never answers; it counts them.
func hungRegistry(t *testing.T) (string, *atomic.Int32) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int32
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			held = append(held, c)
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		for _, c := range held {
			_ = c.Close()
		}
	})
	return l.Addr().String(), &conns
}

// TestHungRegistryIsRefusedWithinTheBudget: a pod whose containers come from a registry that
// accepts connections and never answers is refused by ImageGuard under onUnscanned: Deny, within
// its budget: the webhook's failurePolicy Ignore never gets to admit it by timeout.
func TestHungRegistryIsRefusedWithinTheBudget(t *testing.T) {
	g := NewWithT(t)
	ns := "hung-registry"
	judgedNamespace(g, ns, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		OnUnscanned:     securityv1alpha1.UnscannedDeny,
	})
	host, conns := hungRegistry(t)
	_, stderr, err := kubectl(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: hung, namespace: %[1]s}
spec:
  containers:
  - {name: a, image: "%[2]s/team/a:1"}
  - {name: b, image: "%[2]s/team/b:1"}
  - {name: c, image: "%[2]s/team/c:1"}
`, ns, host), "apply", "-f", "-")
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("denied by ImageGuard"))
	for _, c := range []string{"a", "b", "c"} {
		g.Expect(stderr).To(ContainSubstring(host + "/team/" + c + ":1: not scanned yet (onUnscanned: Deny)"))
	}
	g.Expect(suite.Env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "hung"}, &corev1.Pod{})).NotTo(Succeed())
	// The three tags were looked up at once.
	g.Expect(conns.Load()).To(BeNumerically(">=", 3))
}

// TestKnownFindingsSurviveARestartAndAFailedRescan: the findings of a private image stay in force
// when its registry refuses ImageGuard's credentials, ImageGuard restarts on an empty cache, and
// the new DB's re-match fails: the image is still refused, by digest and by tag.
func TestKnownFindingsSurviveARestartAndAFailedRescan(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "known-findings"
	judgedNamespace(g, ns, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		OnUnscanned:     securityv1alpha1.UnscannedAllow,
	})
	ref, d := suite.Private.Push(t, "known/app", "1.0", testsuite.Image(t.Name()))
	digest := d.String()
	config, err := json.Marshal(map[string]any{"auths": map[string]any{suite.Private.Host(): map[string]string{"username": "puller", "password": "s3cret"}}})
	g.Expect(err).NotTo(HaveOccurred())
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: ns},
		Type:       corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: config},
	}
	g.Expect(suite.Env.Client.Create(ctx, secret)).To(Succeed())
	pod := func(name, image string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.PodSpec{
			ImagePullSecrets: []corev1.LocalObjectReference{{Name: "regcred"}},
			Containers:       []corev1.Container{{Name: "app", Image: image}},
		}}
	}
	// Unscanned, admitted (onUnscanned: Allow); scanned with the pod's pull secret: 1 critical.
	g.Expect(suite.Env.Client.Create(ctx, pod("first", ref))).To(Succeed())
	repo := suite.Private.Host() + "/known/app"
	reportOf(g, ns, repo, digest, func(r *securityv1alpha1.ImageScanReport) bool {
		return scanned(r) && r.Status.Summary.Critical == 1
	})
	g.Eventually(func() error { return suite.Env.Client.Create(ctx, pod("by-tag", ref)) }).WithTimeout(timeout).
		Should(MatchError(ContainSubstring("1 critical (max 0)")))

	// The credentials go, ImageGuard restarts with nothing kept, a new DB arrives: the re-match
	// needs a new analysis, which the registry refuses.
	g.Expect(suite.Env.Client.Delete(ctx, secret)).To(Succeed())
	g.Expect(suite.Restart(true)).To(Succeed())
	suite.Registry.PublishDB(t, testsuite.DBRepository, "2", dbSpec(testutil.AdvisorySpec{
		ID: "CVE-2026-7002", Ecosystem: "alpine 3.22", Package: "unrelated", FixedVersion: "2", Severity: "LOW",
	}))
	_, err = suite.DB.Check(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	r := reportOf(g, ns, repo, digest, func(r *securityv1alpha1.ImageScanReport) bool {
		c := meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionScanned)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == securityv1alpha1.ReasonUnauthorized
	})
	g.Expect(r.Status.Summary.Critical).To(BeEquivalentTo(1), "the last findings are kept")

	// Still refused: by digest, and by tag (which cannot be resolved now).
	g.Eventually(func() error { return suite.Env.Client.Create(ctx, pod("by-digest", repo+"@"+digest)) }).WithTimeout(timeout).
		Should(MatchError(ContainSubstring("1 critical (max 0)")))
	g.Expect(suite.Env.Client.Create(ctx, pod("by-tag-again", ref))).To(MatchError(ContainSubstring("1 critical (max 0)")))
}

// TestNamespaceMadeWithItsWorkloadsIsJudged: a namespace created in the same kubectl apply as its
// Deployment is not in the cache yet when the Deployment is judged; a ClusterImagePolicy that
// selects it by label still refuses the Deployment (the namespace is read from the API server),
// where an internal error would have been admitted under failurePolicy Ignore.
func TestNamespaceMadeWithItsWorkloadsIsJudged(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	pol := &securityv1alpha1.ClusterImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "team-fresh"},
		Spec: securityv1alpha1.ClusterImagePolicySpec{
			Match:       securityv1alpha1.ClusterImageMatch{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "fresh"}}},
			Enforcement: securityv1alpha1.EnforcementEnforce,
			Rules:       securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{suite.Registry.Host() + "/**"}}},
		},
	}
	g.Expect(suite.Env.Client.Create(ctx, pol)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKeyFromObject(pol), pol)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(pol.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
	}).WithTimeout(timeout).Should(Succeed())
	_, stderr, err := kubectl(fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: fresh, labels: {team: fresh, %[1]s: "true"}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: fresh}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: "evil.example.com/web:1"}]
`, admissionLabel), "apply", "-f", "-")
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("ClusterImagePolicy/team-fresh: evil.example.com/web:1: registries"))
}

// TestWebhookRequiresTheAPIServersCertificate: a caller without the client certificate the API
// server presents is refused at the handshake; with it, answered.
func TestWebhookRequiresTheAPIServersCertificate(t *testing.T) {
	g := NewWithT(t)
	body := strings.NewReader(`{"apiVersion":"imagepolicy.k8s.io/v1alpha1","kind":"ImageReview","spec":{"namespace":"default","containers":[{"image":"evil.example.com/x:1"}]}}`)
	anonymous, err := suite.WebhookClient(true)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = anonymous.Post(suite.WebhookURL(admission.ImagePolicyPath), "application/json", body)
	g.Expect(err).To(MatchError(ContainSubstring("certificate required")))

	apiServer, err := suite.WebhookClient(false)
	g.Expect(err).NotTo(HaveOccurred())
	resp, err := apiServer.Post(suite.WebhookURL(admission.ImagePolicyPath), "application/json",
		strings.NewReader(`{"apiVersion":"imagepolicy.k8s.io/v1alpha1","kind":"ImageReview","spec":{"namespace":"default","containers":[{"image":"evil.example.com/x:1"}]}}`))
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
}
