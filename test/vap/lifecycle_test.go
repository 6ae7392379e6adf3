// Package vap tests the ValidatingAdmissionPolicies ImageGuard generates, as a cluster lives with
// them: the policy reconcilers keep them (a real manager against a real API server, whose
// webhook configuration points at an ImageGuard that does not answer, with failurePolicy
// Ignore), and kubectl, with ImageGuard stopped, meets their refusals.
package vap

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/testenv"
	ivap "github.com/imageguard/imageguard/internal/vap"
	"github.com/imageguard/imageguard/internal/workload"
)

// judgedLabel selects the namespaces ImageGuard's (unanswering) webhook is configured for.
const judgedLabel = "imageguard-test/judged"

var env *testenv.Env

func TestMain(m *testing.M) {
	webhooks, err := testenv.ValidatingWebhooks(judgedLabel)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Nothing serves the webhook: the API server cannot reach ImageGuard, and, as the chart's
	// default says, ignores it.
	for _, cfg := range webhooks {
		for i := range cfg.Webhooks {
			cfg.Webhooks[i].FailurePolicy = ptr.To(admissionregistrationv1.Ignore)
			cfg.Webhooks[i].TimeoutSeconds = ptr.To[int32](2)
		}
	}
	env, err = testenv.Start(testenv.Options{ValidatingWebhooks: webhooks})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

// imageGuard runs the policy reconcilers, generating admission policies unless generate is false;
// the returned function stops them.
func imageGuard(t *testing.T, generate bool) func() {
	t.Helper()
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: scheme.New(), Cache: controllers.CacheOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		// Each test runs its own ImageGuard, one after another, in this process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := workload.IndexReports(context.Background(), mgr.GetFieldIndexer()); err != nil {
		t.Fatal(err)
	}
	var opts *ivap.Options
	if generate {
		opts = &ivap.Options{OptOutLabel: admission.OptOutLabel, ControllerUsers: admission.DefaultControllerUsers}
	}
	gatherer := workload.NewGatherer(mgr.GetCache(), "").ReadNamespacesLive(mgr.GetAPIReader())
	if err := controllers.SetupPolicies(mgr, gatherer, controllers.Options{AdmissionPolicies: opts}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	labels[judgedLabel] = "true"
	if err := env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}); err != nil {
		t.Fatal(err)
	}
}

// ready waits until obj's AdmissionPolicyReady condition has status and reason.
func ready(g Gomega, obj client.Object, status metav1.ConditionStatus, reason string) {
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(obj), obj)).To(Succeed())
		var conditions []metav1.Condition
		switch p := obj.(type) {
		case *securityv1alpha1.ImagePolicy:
			conditions = p.Status.Conditions
		case *securityv1alpha1.ClusterImagePolicy:
			conditions = p.Status.Conditions
		}
		c := meta.FindStatusCondition(conditions, securityv1alpha1.ConditionAdmissionPolicyReady)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(status), c.Message)
		g.Expect(c.Reason).To(Equal(reason), c.Message)
		g.Expect(c.ObservedGeneration).To(Equal(obj.GetGeneration()))
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
}

// generated returns the policy and binding generated for ref; nil when absent.
func generated(g Gomega, ref string) (*admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding) {
	ctx := context.Background()
	key := client.ObjectKey{Name: ivap.Name(ref)}
	p := &admissionregistrationv1.ValidatingAdmissionPolicy{}
	b := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	if err := env.Client.Get(ctx, key, p); err != nil {
		g.Expect(client.IgnoreNotFound(err)).To(Succeed())
		p = nil
	}
	if err := env.Client.Get(ctx, key, b); err != nil {
		g.Expect(client.IgnoreNotFound(err)).To(Succeed())
		b = nil
	}
	return p, b
}

// kubectlApply applies manifest with kubectl, as a user would, and returns what it said.
func kubectlApply(t *testing.T, manifest string) (string, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	return env.RunKubectl(context.Background(), "apply", "-f", path)
}

func deployment(namespace, name, image string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  selector: {matchLabels: {app: %[2]s}}
  template:
    metadata: {labels: {app: %[2]s}}
    spec:
      containers: [{name: app, image: %[3]q}]
`, namespace, name, image)
}

func pod(namespace, name, image string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  containers: [{name: app, image: %[3]q}]
`, namespace, name, image)
}

const trustedDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// With ImageGuard stopped and its webhook ignored, the generated policies refuse a Deployment
// from an untrusted registry, one using :latest, and a pod without a digest where digests are
// required, each naming the policy and the rule; a trusted, pinned image is admitted.
func TestEnforcedWhileImageGuardIsDown(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	namespace(t, "shop", map[string]string{})
	namespace(t, "vault", map[string]string{"pinned": "true"})
	trusted := &securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "trusted", Namespace: "shop"},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce, Rules: securityv1alpha1.PolicyRules{
			Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}},
			Tags:       &securityv1alpha1.TagRule{DisallowLatest: true},
		}}}
	pinned := &securityv1alpha1.ClusterImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "pinned"},
		Spec: securityv1alpha1.ClusterImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce,
			Match: securityv1alpha1.ClusterImageMatch{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pinned": "true"}}},
			Rules: securityv1alpha1.PolicyRules{Tags: &securityv1alpha1.TagRule{RequireDigest: true}}}}
	g.Expect(env.Client.Create(ctx, trusted)).To(Succeed())
	g.Expect(env.Client.Create(ctx, pinned)).To(Succeed())
	stop := imageGuard(t, true)
	ready(g, trusted, metav1.ConditionTrue, securityv1alpha1.ReasonAdmissionPolicyGenerated)
	ready(g, pinned, metav1.ConditionTrue, securityv1alpha1.ReasonAdmissionPolicyGenerated)

	// Owned as the API allows: a cluster policy's by the policy, a namespaced one's by its namespace.
	p, b := generated(g, "ClusterImagePolicy/pinned")
	g.Expect(p).NotTo(BeNil())
	g.Expect(b).NotTo(BeNil())
	g.Expect(p.OwnerReferences).To(ConsistOf(HaveField("UID", pinned.UID)))
	g.Expect(p.Labels).To(HaveKeyWithValue(ivap.LabelGenerated, "true"))
	p, _ = generated(g, "ImagePolicy/shop/trusted")
	g.Expect(p.OwnerReferences).To(ConsistOf(HaveField("Kind", "Namespace")))
	// The API server takes new policies from its own informer, within a moment of their creation.
	for ns, image := range map[string]string{"shop": "evil.example.com/probe:1", "vault": "registry.example.com/probe:1"} {
		g.Eventually(func() error {
			return env.Client.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: ns},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}}, client.DryRunAll)
		}).WithTimeout(30*time.Second).Should(MatchError(ContainSubstring("denied by ImageGuard")), ns)
	}
	stop()

	// ImageGuard is down: nothing answers its webhook.
	out, err := kubectlApply(t, deployment("shop", "untrusted", "evil.example.com/web:1.0"))
	g.Expect(err).To(MatchError(ContainSubstring(
		"denied by ImageGuard: ImagePolicy/shop/trusted: evil.example.com/web:1.0: registries: evil.example.com/web is not from a trusted registry (allowed: registry.example.com/**)")), out)
	out, err = kubectlApply(t, deployment("shop", "latest", "registry.example.com/web:latest"))
	g.Expect(err).To(MatchError(ContainSubstring(
		"denied by ImageGuard: ImagePolicy/shop/trusted: registry.example.com/web:latest: tags: the latest tag (or no tag) is not allowed")), out)
	out, err = kubectlApply(t, pod("vault", "tagged", "registry.example.com/vault:1.17"))
	g.Expect(err).To(MatchError(ContainSubstring(
		"denied by ImageGuard: ClusterImagePolicy/pinned: registry.example.com/vault:1.17: tags: the image must be referred to by digest (image@sha256:...)")), out)
	out, err = kubectlApply(t, deployment("shop", "good", "registry.example.com/web:1.0@"+trustedDigest))
	g.Expect(err).NotTo(HaveOccurred(), out)
	out, err = kubectlApply(t, pod("vault", "good", "registry.example.com/vault@"+trustedDigest))
	g.Expect(err).NotTo(HaveOccurred(), out)
}

// Editing a policy updates its generated objects; a hand edit, a deleted binding and removed
// labels are restored; Audit removes them, Enforce brings them back; deleting the policy removes
// them, also when it happens while ImageGuard is down; an unchanged policy writes nothing.
func TestGeneratedObjectsFollowThePolicy(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	namespace(t, "shop2", map[string]string{})
	pol := &securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "trusted", Namespace: "shop2"},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce, Rules: securityv1alpha1.PolicyRules{
			Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}},
		}}}
	g.Expect(env.Client.Create(ctx, pol)).To(Succeed())
	stop := imageGuard(t, true)
	ready(g, pol, metav1.ConditionTrue, securityv1alpha1.ReasonAdmissionPolicyGenerated)
	ref := "ImagePolicy/shop2/trusted"
	refused := func(image string) func() error {
		return func() error {
			return env.Client.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop2"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}}, client.DryRunAll)
		}
	}
	g.Eventually(refused("other.example.com/web:1")).Should(MatchError(ContainSubstring("registries")))

	// An unchanged policy writes nothing, however often it is reconciled (a workload changes).
	p, b := generated(g, ref)
	for i := range 3 {
		g.Expect(env.Client.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("w", i), Namespace: "shop2"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/web:1"}}}})).To(Succeed())
	}
	g.Eventually(func() int32 {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(pol), pol)).To(Succeed())
		if pol.Status.Summary == nil {
			return 0
		}
		return pol.Status.Summary.Workloads
	}).WithTimeout(30 * time.Second).Should(BeEquivalentTo(3))
	p2, b2 := generated(g, ref)
	g.Expect(p2.ResourceVersion).To(Equal(p.ResourceVersion))
	g.Expect(b2.ResourceVersion).To(Equal(b.ResourceVersion))

	// Edited: the generated policy follows.
	pol.Spec.Rules.Registries.Allowed = []string{"other.example.com/**"}
	g.Expect(env.Client.Update(ctx, pol)).To(Succeed())
	ready(g, pol, metav1.ConditionTrue, securityv1alpha1.ReasonAdmissionPolicyGenerated)
	g.Eventually(refused("other.example.com/web:1")).WithTimeout(30 * time.Second).Should(Succeed())
	g.Eventually(refused("registry.example.com/web:1")).WithTimeout(30 * time.Second).Should(MatchError(ContainSubstring("registries")))

	// A hand edit that would let everything through is undone.
	p, _ = generated(g, ref)
	want := p.Spec.DeepCopy()
	p.Spec.Validations = []admissionregistrationv1.Validation{{Expression: "true"}}
	g.Expect(env.Client.Update(ctx, p)).To(Succeed())
	g.Eventually(func() admissionregistrationv1.ValidatingAdmissionPolicySpec {
		p, _ = generated(g, ref)
		return p.Spec
	}).WithTimeout(30 * time.Second).Should(Equal(*want))
	// So is a deleted binding, and labels edited away.
	_, b = generated(g, ref)
	g.Expect(env.Client.Delete(ctx, b)).To(Succeed())
	g.Eventually(func() bool { _, b = generated(g, ref); return b != nil }).WithTimeout(30 * time.Second).Should(BeTrue())
	p, _ = generated(g, ref)
	delete(p.Labels, ivap.LabelGenerated)
	p.Spec.FailurePolicy = ptr.To(admissionregistrationv1.Ignore)
	g.Expect(env.Client.Update(ctx, p)).To(Succeed())
	g.Eventually(func(g Gomega) {
		p, _ = generated(g, ref)
		g.Expect(p.Labels).To(HaveKeyWithValue(ivap.LabelGenerated, "true"))
		g.Expect(*p.Spec.FailurePolicy).To(Equal(admissionregistrationv1.Fail))
	}).WithTimeout(30 * time.Second).Should(Succeed())

	// Audit: nothing is refused at admission, so nothing is generated; Enforce again brings it back.
	g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(pol), pol)).To(Succeed())
	pol.Spec.Enforcement = securityv1alpha1.EnforcementAudit
	g.Expect(env.Client.Update(ctx, pol)).To(Succeed())
	ready(g, pol, metav1.ConditionFalse, securityv1alpha1.ReasonNotEnforcing)
	p, b = generated(g, ref)
	g.Expect(p).To(BeNil())
	g.Expect(b).To(BeNil())
	pol.Spec.Enforcement = securityv1alpha1.EnforcementWarn
	g.Expect(env.Client.Update(ctx, pol)).To(Succeed())
	ready(g, pol, metav1.ConditionTrue, securityv1alpha1.ReasonAdmissionPolicyGenerated)
	_, b = generated(g, ref)
	g.Expect(b.Spec.ValidationActions).To(ConsistOf(admissionregistrationv1.Warn))

	// Deleted: removed.
	g.Expect(env.Client.Delete(ctx, pol)).To(Succeed())
	g.Eventually(func() bool { p, b = generated(g, ref); return p == nil && b == nil }).WithTimeout(30 * time.Second).Should(BeTrue())

	// Deleted while ImageGuard is down: removed when it is back.
	other := &securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "shop2"},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce, Rules: securityv1alpha1.PolicyRules{
			Tags: &securityv1alpha1.TagRule{DisallowLatest: true}}}}
	g.Expect(env.Client.Create(ctx, other)).To(Succeed())
	ready(g, other, metav1.ConditionTrue, securityv1alpha1.ReasonAdmissionPolicyGenerated)
	stop()
	g.Expect(env.Client.Delete(ctx, other)).To(Succeed())
	p, _ = generated(g, "ImagePolicy/shop2/other")
	g.Expect(p).NotTo(BeNil(), "nothing removes it while ImageGuard is down")
	imageGuard(t, true)
	g.Eventually(func() bool { p, b = generated(g, "ImagePolicy/shop2/other"); return p == nil && b == nil }).
		WithTimeout(30 * time.Second).Should(BeTrue())
}

// Generation turned off removes what was generated before, and the policy says so.
func TestGenerationOffRemovesWhatWasGenerated(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	namespace(t, "shop3", map[string]string{})
	pol := &securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "trusted", Namespace: "shop3"},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce, Rules: securityv1alpha1.PolicyRules{
			Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}}}}}
	g.Expect(env.Client.Create(ctx, pol)).To(Succeed())
	stop := imageGuard(t, true)
	ready(g, pol, metav1.ConditionTrue, securityv1alpha1.ReasonAdmissionPolicyGenerated)
	stop()
	imageGuard(t, false)
	ready(g, pol, metav1.ConditionFalse, securityv1alpha1.ReasonGenerationDisabled)
	g.Eventually(func() bool { p, b := generated(g, "ImagePolicy/shop3/trusted"); return p == nil && b == nil }).
		WithTimeout(30 * time.Second).Should(BeTrue())
	g.Expect(strings.Contains(meta.FindStatusCondition(pol.Status.Conditions, securityv1alpha1.ConditionAdmissionPolicyReady).Message,
		"--generate-admission-policies")).To(BeTrue())
}

// A policy held by a finalizer while it is deleted is still enforced by the webhook as it reads,
// changes included: its generated objects follow it until it is gone.
func TestGeneratedObjectsFollowATerminatingPolicy(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	namespace(t, "shop4", map[string]string{})
	pol := &securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "held", Namespace: "shop4", Finalizers: []string{"example.com/hold"}},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce, Rules: securityv1alpha1.PolicyRules{
			Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**", "other.example.com/**"}}}}}
	g.Expect(env.Client.Create(ctx, pol)).To(Succeed())
	imageGuard(t, true)
	ready(g, pol, metav1.ConditionTrue, securityv1alpha1.ReasonAdmissionPolicyGenerated)
	g.Expect(env.Client.Delete(ctx, pol)).To(Succeed())
	g.Eventually(func() error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pol), pol); err != nil {
			return err
		}
		pol.Spec.Rules.Registries.Allowed = []string{"registry.example.com/**"}
		return env.Client.Update(ctx, pol)
	}).Should(Succeed())
	g.Eventually(func() error {
		return env.Client.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop4"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "other.example.com/web:1"}}}}, client.DryRunAll)
	}).WithTimeout(30*time.Second).Should(MatchError(ContainSubstring("registries")), "the tightened policy, while it terminates")
	g.Eventually(func() error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pol), pol); err != nil {
			return err
		}
		pol.Finalizers = nil
		return env.Client.Update(ctx, pol)
	}).Should(Succeed())
	g.Eventually(func() bool { p, b := generated(g, "ImagePolicy/shop4/held"); return p == nil && b == nil }).
		WithTimeout(30 * time.Second).Should(BeTrue())
}
