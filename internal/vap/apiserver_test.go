package vap

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/cel/openapi/resolver"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/testenv"
)

// env is a real control plane: kube-apiserver evaluates the generated policies.
var env *testenv.Env

func TestMain(m *testing.M) {
	var err error
	ctrl.SetLogger(logr.Discard())
	env, err = testenv.Start(testenv.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

// install creates pol's namespace and the objects generated from pol, and waits until the API
// server refuses probe (an image pol refuses, in a pod with labels) with them.
func install(t *testing.T, pol *securityv1alpha1.ImagePolicy, labels map[string]string, probe string) *Objects {
	t.Helper()
	g := NewWithT(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pol.Namespace}}
	g.Expect(env.Client.Create(ctx, ns)).To(Succeed())
	objs, err := Generate(pol, ns, testOptions)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(env.Client.Create(ctx, objs.Policy)).To(Succeed())
	g.Expect(env.Client.Create(ctx, objs.Binding)).To(Succeed())
	g.Eventually(func() error {
		return env.Client.Create(ctx, podOf(pol.Namespace, labels, probe), client.DryRunAll)
	}).WithTimeout(30*time.Second).WithPolling(100*time.Millisecond).Should(MatchError(ContainSubstring("denied by ImageGuard")),
		"the API server enforces %s", objs.Policy.Name)
	return objs
}

// createPod is the API server's answer to creating pod (dry run): allowed, or the message.
func createPod(c client.Client, pod *corev1.Pod) (bool, string, error) {
	err := c.Create(context.Background(), pod, client.DryRunAll)
	switch {
	case err == nil:
		return true, "", nil
	case apierrors.IsInvalid(err) && !strings.Contains(err.Error(), "ValidatingAdmissionPolicy"):
		// The API server's own validation refused it before any admission policy ran.
		return false, "", err
	}
	return false, err.Error(), nil
}

// Every spelling of the table gets the same verdict, and the same message, from the API server
// evaluating the generated policy as from ImageGuard's webhook.
func TestAPIServerAgreesWithTheWebhook(t *testing.T) {
	for _, pol := range spellingPolicies() {
		t.Run(pol.Name, func(t *testing.T) {
			probe := map[string]string{"trusted": "registry.example.com/app:latest", "pinned": "registry.example.com/app:1", "tagged": "evil.io/app:1",
				"plain": "registry.example.com/team/x/app:1"}[pol.Name]
			install(t, pol, nil, probe)
			webhook := newWebhook(t, pol)
			var admitted, refused, invalid int
			for _, ref := range spellings {
				pod := podOf(pol.Namespace, nil, ref)
				d := webhook.decide(t, nil, containersOfPod(pod))
				allowed, msg, invalidErr := createPod(env.Client, pod)
				if invalidErr != nil {
					invalid++
					if d.Allowed {
						t.Errorf("%q: the webhook admits what the API server's validation refuses: %v", ref, invalidErr)
					}
					continue
				}
				if diff := agree(d, allowed, msg); diff != "" {
					t.Errorf("%q: %s", ref, diff)
				}
				if allowed {
					admitted++
				} else {
					refused++
				}
			}
			t.Logf("%d spellings: %d admitted, %d refused by the generated policy, %d by the API server's validation", len(spellings), admitted, refused, invalid)
			g := NewWithT(t)
			g.Expect(admitted).To(BeNumerically(">", 5))
			g.Expect(refused).To(BeNumerically(">", 20))
		})
	}
}

// The API server's own type check of a generated policy (what kube-controller-manager's
// validatingadmissionpolicy-status-controller writes to its status), against the real schemas of
// every matched kind as the API server serves them, finds nothing to warn of.
func TestGeneratedPoliciesTypeCheck(t *testing.T) {
	g := NewWithT(t)
	disc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	g.Expect(err).NotTo(HaveOccurred())
	checker := &validating.TypeChecker{SchemaResolver: &resolver.ClientDiscoveryResolver{Discovery: disc}, RestMapper: env.Client.RESTMapper()}
	pol := spellingPolicies()[0].DeepCopy()
	pol.Spec.Match.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "prod"}}
	pol.Spec.Match.Images = []string{"registry.example.com/**", "evil.io/*:v*"}
	for _, p := range append(spellingPolicies(), pol) {
		objs, err := Generate(p, &corev1.Namespace{}, testOptions)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(checker.Check(objs.Policy)).To(BeEmpty(), p.Name)
	}
	// It does warn of an expression that is wrong for a matched kind: the check runs.
	objs, err := Generate(pol, &corev1.Namespace{}, testOptions)
	g.Expect(err).NotTo(HaveOccurred())
	objs.Policy.Spec.Validations = append(objs.Policy.Spec.Validations, admissionregistrationv1.Validation{Expression: "object.spec.noSuchField == 1"})
	g.Expect(checker.Check(objs.Policy)).NotTo(BeEmpty())
}

// Templates, updates and the cluster's controllers, as the API server evaluates them: a
// Deployment from an untrusted registry is refused; one made before the policy scales and is
// relabelled, but not given a new untrusted image; what the replicaset controller makes for a
// ReplicaSet is not judged again, what anyone else makes is.
func TestAPIServerJudgesTemplatesUpdatesAndControllers(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	pol := spellingPolicies()[0].DeepCopy()
	pol.Name, pol.Namespace = "templates", "spell-templates"
	deploy := func(name, image string) *appsv1.Deployment {
		labels := map[string]string{"app": name}
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: pol.Namespace, Labels: labels},
			Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}}}}
	}
	// Made before the policy.
	g.Expect(env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pol.Namespace}})).To(Succeed())
	old := deploy("old", "evil.io/web:1")
	g.Expect(env.Client.Create(ctx, old)).To(Succeed())
	ns := &corev1.Namespace{}
	g.Expect(env.Client.Get(ctx, client.ObjectKey{Name: pol.Namespace}, ns)).To(Succeed())
	objs, err := Generate(pol, ns, testOptions)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(env.Client.Create(ctx, objs.Policy)).To(Succeed())
	g.Expect(env.Client.Create(ctx, objs.Binding)).To(Succeed())

	var createErr error
	g.Eventually(func() error {
		createErr = env.Client.Create(ctx, deploy("new", "evil.io/web:1"), client.DryRunAll)
		return createErr
	}).WithTimeout(30 * time.Second).Should(HaveOccurred())
	g.Expect(createErr.Error()).To(ContainSubstring("denied by ImageGuard: ImagePolicy/spell-templates/templates: evil.io/web:1: registries: evil.io/web is not from a trusted registry"))

	g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(old), old)).To(Succeed())
	old.Spec.Replicas = ptr.To[int32](3)
	old.Labels["release"] = "canary"
	g.Expect(env.Client.Update(ctx, old)).To(Succeed(), "scaling and relabelling what runs")
	old.Spec.Template.Spec.Containers[0].Image = "evil.io/web:2"
	g.Expect(env.Client.Update(ctx, old)).To(MatchError(ContainSubstring("evil.io/web:2: registries")), "a new untrusted image")

	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "old-1", Namespace: pol.Namespace, Labels: map[string]string{"app": "old"}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "old"}}, Template: old.Spec.Template}}
	rs.Spec.Template.Spec.Containers[0].Image = "registry.example.com/web:1"
	g.Expect(env.Client.Create(ctx, rs)).To(Succeed())
	pod := podOf(pol.Namespace, map[string]string{"app": "old"}, "evil.io/web:1")
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: ptr.To(true)}}
	as := func(user string) client.Client {
		cfg := rest.CopyConfig(env.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:masters"}}
		c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
		g.Expect(err).NotTo(HaveOccurred())
		return c
	}
	allowed, msg, err := createPod(as("system:serviceaccount:kube-system:replicaset-controller"), pod.DeepCopy())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(allowed).To(BeTrue(), msg)
	allowed, _, err = createPod(as("alice"), pod.DeepCopy())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(allowed).To(BeFalse(), "alice makes a pod for the ReplicaSet")
}

// BenchmarkPodCreate measures what the generated policies cost the API server: the latency of
// creating a pod (three images, admitted) in a namespace with no generated policy, in one with 20
// (ImagePolicies with trusted registries, tags rules, match.images and selectors), and, for
// comparison, in one with 20 trivial ValidatingAdmissionPolicies.
//
//	go test ./internal/vap -run '^$' -bench PodCreate -benchtime 2000x
func BenchmarkPodCreate(b *testing.B) {
	ctx := context.Background()
	images := []string{"registry.example.com/team/app:1.2@" + digest, "registry.example.com/team/sidecar:3@" + digest, "docker.io/library/busybox:1.37@" + digest}
	for _, policies := range []int{0, 20, -20} {
		trivial := policies < 0
		policies := max(policies, -policies)
		b.Run(fmt.Sprintf("policies=%d,trivial=%v", policies, trivial), func(b *testing.B) {
			ns := fmt.Sprintf("bench-%d-%d", policies, time.Now().UnixNano())
			nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
			if err := env.Client.Create(ctx, nsObj); err != nil {
				b.Fatal(err)
			}
			var probe string
			for i := range policies {
				pol := &securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("p", i), Namespace: ns},
					Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce, Rules: securityv1alpha1.PolicyRules{
						Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**", "docker.io/library/*", fmt.Sprintf("mirror-%d.example.com/**", i)}},
						Tags:       &securityv1alpha1.TagRule{DisallowLatest: true, RequireDigest: i%2 == 0},
					}}}
				if i%3 == 0 {
					pol.Spec.Match.Images = []string{"registry.example.com/**", "docker.io/**"}
				}
				if i%4 == 0 {
					pol.Spec.Match.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"dev"}}}}
				}
				objs, err := Generate(pol, nsObj, testOptions)
				if err != nil {
					b.Fatal(err)
				}
				if trivial {
					// What any ValidatingAdmissionPolicy costs, for comparison.
					objs.Policy.Spec.Variables = nil
					objs.Policy.Spec.Validations = []admissionregistrationv1.Validation{{Expression: "!object.spec.containers.exists(c, c.image.startsWith('evil'))"}}
				}
				if err := env.Client.Create(ctx, objs.Policy); err != nil {
					b.Fatal(err)
				}
				if err := env.Client.Create(ctx, objs.Binding); err != nil {
					b.Fatal(err)
				}
				probe = objs.Policy.Name
			}
			if policies > 0 {
				// Every binding is in force once the last one refuses.
				deadline := time.Now().Add(30 * time.Second)
				for env.Client.Create(ctx, podOf(ns, nil, "evil.io/app:1"), client.DryRunAll) == nil {
					if time.Now().After(deadline) {
						b.Fatalf("%s is not enforced", probe)
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
			latencies := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				pod := podOf(ns, map[string]string{"tier": "prod"}, images...)
				pod.Name = fmt.Sprint("p", i)
				start := time.Now()
				if err := env.Client.Create(ctx, pod); err != nil {
					b.Fatal(err)
				}
				latencies = append(latencies, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(latencies)
			q := func(f float64) float64 {
				return float64(latencies[int(f*float64(len(latencies)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(q(0.5), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(float64(latencies[len(latencies)-1].Microseconds())/1000, "max-ms")
		})
	}
}
