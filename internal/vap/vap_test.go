package vap

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/workload"
)

var testOptions = Options{OptOutLabel: admission.OptOutLabel, ControllerUsers: admission.DefaultControllerUsers}

func generate(t testing.TB, pol *securityv1alpha1.ImagePolicy) *Objects {
	t.Helper()
	objs, err := Generate(pol, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pol.Namespace, UID: "ns-uid"}}, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func containersOfPod(pod *corev1.Pod) []workload.Container { return workload.Containers(&pod.Spec) }

// Every spelling, and every combination of a host, a path, a tag and a digest spelt many ways,
// gets the same verdict and message from the generated CEL as from the webhook.
func TestCELAgreesWithTheWebhook(t *testing.T) {
	refs := append([]string{}, spellings...)
	hosts := []string{"", "registry.example.com/", "REGISTRY.example.COM/", "registry.example.com:443/", "registry.example.com:0443/",
		"registry.example.com:5000/", "docker.io/", "index.docker.io/", "Index.Docker.IO:443/", "localhost/", "localhost:5000/",
		"[2001:db8::1]:5000/", "[2001:DB8::1]:443/", "[::1]:5000/", "my-reg:5000/", "a.b/", "reg_x.io/", "evil.io/", "x-.io/"}
	paths := []string{"nginx", "library/nginx", "team/app", "Team/app", "a", "a.b", "x/y/z", "a__b", "a-_b", "bitnami/redis"}
	tags := []string{"", ":latest", ":1", ":v1.2", ":LATEST", ":.x", ":" + strings.Repeat("a", 128), ":" + strings.Repeat("a", 129)}
	digests := []string{"", "@" + digest, "@" + strings.ToUpper(digest)}
	for _, h := range hosts {
		for _, p := range paths {
			for _, tg := range tags {
				for _, d := range digests {
					refs = append(refs, h+p+tg+d)
				}
			}
		}
	}
	for _, pol := range spellingPolicies() {
		e := newEvaluator(t, generate(t, pol).Policy)
		webhook := newWebhook(t, pol)
		var disagree, admitted, malformed int
		for _, ref := range refs {
			pod := podOf(pol.Namespace, nil, ref)
			d := webhook.decide(t, nil, containersOfPod(pod))
			allowed, msg := e.admit(t, "CREATE", "pods", "alice", pod, nil)
			if diff := agree(d, allowed, msg); diff != "" {
				disagree++
				if disagree <= 20 {
					t.Errorf("%s, %q: %s", pol.Name, ref, diff)
				}
			}
			switch {
			case d.Allowed:
				admitted++
			case strings.Contains(d.Message, "malformed"):
				malformed++
			}
		}
		t.Logf("%s: %d references: %d admitted, %d malformed, %d refused by a rule; %d disagree",
			pol.Name, len(refs), admitted, malformed, len(refs)-admitted-malformed, disagree)
		// The table is worth something only if it has all three outcomes in number.
		g := NewWithT(t)
		g.Expect(admitted).To(BeNumerically(">", 100))
		g.Expect(malformed).To(BeNumerically(">", 100))
		g.Expect(len(refs) - admitted - malformed).To(BeNumerically(">", 50))
	}
}

// A pod with several images: every failure, in the webhook's order (rule by rule, image by image).
func TestCELListsEveryFailureInTheWebhooksOrder(t *testing.T) {
	g := NewWithT(t)
	pol := spellingPolicies()[0]
	e := newEvaluator(t, generate(t, pol).Policy)
	pod := podOf(pol.Namespace, nil, "evil.io/web:1", "registry.example.com/ok:1", "nginx", "other.io/db")
	pod.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "init.io/init:1"}}
	pod.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", Image: "busybox"}}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: "data.io/data:1"}}}}
	d := newWebhook(t, pol).decide(t, nil, containersOfPod(pod))
	allowed, msg := e.admit(t, "CREATE", "pods", "alice", pod, nil)
	g.Expect(agree(d, allowed, msg)).To(BeEmpty())
	for _, img := range []string{"init.io/init:1", "evil.io/web:1", "data.io/data:1", "other.io/db:latest"} {
		g.Expect(msg).To(ContainSubstring(img + ": registries"))
	}
	for _, img := range []string{"docker.io/library/nginx:latest", "docker.io/library/busybox:latest"} {
		g.Expect(msg).To(ContainSubstring(img + ": tags: the latest tag (or no tag) is not allowed"))
	}
}

// Every pod template kind is judged at its template; the selector reads the object's labels and
// its pods'.
func TestCELJudgesEveryTemplateKind(t *testing.T) {
	g := NewWithT(t)
	pol := spellingPolicies()[0].DeepCopy()
	pol.Spec.Match.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "prod"},
		MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"infra"}}}}
	e := newEvaluator(t, generate(t, pol).Policy)
	tmpl := func(labels map[string]string, image string) corev1.PodTemplateSpec {
		return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}}
	}
	prod, infra := map[string]string{"tier": "prod"}, map[string]string{"tier": "prod", "team": "infra"}
	objs := map[string]func(own, pods map[string]string, image string) any{
		"deployments": func(own, pods map[string]string, image string) any {
			return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Labels: own}, Spec: appsv1.DeploymentSpec{Template: tmpl(pods, image)}}
		},
		"statefulsets": func(own, pods map[string]string, image string) any {
			return &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Labels: own}, Spec: appsv1.StatefulSetSpec{Template: tmpl(pods, image)}}
		},
		"daemonsets": func(own, pods map[string]string, image string) any {
			return &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Labels: own}, Spec: appsv1.DaemonSetSpec{Template: tmpl(pods, image)}}
		},
		"replicasets": func(own, pods map[string]string, image string) any {
			return &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Labels: own}, Spec: appsv1.ReplicaSetSpec{Template: tmpl(pods, image)}}
		},
		"jobs": func(own, pods map[string]string, image string) any {
			return &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Labels: own}, Spec: batchv1.JobSpec{Template: tmpl(pods, image)}}
		},
		"cronjobs": func(own, pods map[string]string, image string) any {
			return &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Labels: own},
				Spec: batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl(pods, image)}}}}
		},
		"pods": func(own, _ map[string]string, image string) any { return podOf("ns", own, image) },
	}
	for resource, mk := range objs {
		allowed, msg := e.admit(t, "CREATE", resource, "alice", mk(nil, prod, "evil.io/web:1"), nil)
		if resource == "pods" {
			g.Expect(allowed).To(BeTrue(), "a pod without labels is not selected")
		} else {
			g.Expect(allowed).To(BeFalse(), "%s: the template's labels select it", resource)
			g.Expect(msg).To(ContainSubstring("evil.io/web:1: registries"))
		}
		allowed, _ = e.admit(t, "CREATE", resource, "alice", mk(prod, nil, "evil.io/web:1"), nil)
		g.Expect(allowed).To(BeFalse(), "%s: its own labels select it", resource)
		allowed, _ = e.admit(t, "CREATE", resource, "alice", mk(infra, infra, "evil.io/web:1"), nil)
		g.Expect(allowed).To(BeTrue(), "%s: team NotIn (infra) leaves it out", resource)
		allowed, _ = e.admit(t, "CREATE", resource, "alice", mk(prod, prod, "registry.example.com/web:1"), nil)
		g.Expect(allowed).To(BeTrue(), "%s: a trusted image", resource)
	}
}

// Updates are judged as the webhook judges them: when the images change, or when new labels bring
// the object under the policy; not a scale or a relabel within it.
func TestCELJudgesUpdatesAsTheWebhook(t *testing.T) {
	g := NewWithT(t)
	pol := spellingPolicies()[0].DeepCopy()
	pol.Spec.Match.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "prod"}}
	e := newEvaluator(t, generate(t, pol).Policy)
	dep := func(tier, image string, replicas int32) *appsv1.Deployment {
		labels := map[string]string{"tier": tier}
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: appsv1.DeploymentSpec{Replicas: &replicas,
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}}}}
	}
	allowed, _ := e.admit(t, "UPDATE", "deployments", "alice", dep("prod", "evil.io/web:1", 5), dep("prod", "evil.io/web:1", 1))
	g.Expect(allowed).To(BeTrue(), "scaling what runs")
	allowed, _ = e.admit(t, "UPDATE", "deployments", "alice", dep("prod", "evil.io/api:1", 1), dep("prod", "evil.io/web:1", 1))
	g.Expect(allowed).To(BeFalse(), "a new image")
	allowed, _ = e.admit(t, "UPDATE", "deployments", "alice", dep("prod", "evil.io/web:1", 1), dep("dev", "evil.io/web:1", 1))
	g.Expect(allowed).To(BeFalse(), "relabelled into the policy's scope")
	allowed, _ = e.admit(t, "UPDATE", "deployments", "alice", dep("dev", "evil.io/api:1", 1), dep("prod", "evil.io/web:1", 1))
	g.Expect(allowed).To(BeTrue(), "relabelled out of it")

	// Without a selector, the same without the labels.
	e = newEvaluator(t, generate(t, spellingPolicies()[0]).Policy)
	allowed, _ = e.admit(t, "UPDATE", "deployments", "alice", dep("prod", "evil.io/web:1", 5), dep("prod", "evil.io/web:1", 1))
	g.Expect(allowed).To(BeTrue())
	allowed, _ = e.admit(t, "UPDATE", "deployments", "alice", dep("prod", "evil.io/api:1", 1), dep("prod", "evil.io/web:1", 1))
	g.Expect(allowed).To(BeFalse())
}

// What the cluster's controllers make for a controlling owner of a kind judged at its template is
// not judged again; anything else they, or anyone, make is.
func TestCELLeavesOutWhatControllersMakeForTheirOwners(t *testing.T) {
	g := NewWithT(t)
	e := newEvaluator(t, generate(t, spellingPolicies()[0]).Policy)
	owned := func(apiVersion, kind string) *corev1.Pod {
		pod := podOf("ns", nil, "evil.io/web:1")
		pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: "o", UID: "u", Controller: new(true)}}
		return pod
	}
	rsController := "system:serviceaccount:kube-system:replicaset-controller"
	allowed, _ := e.admit(t, "CREATE", "pods", rsController, owned("apps/v1", "ReplicaSet"), nil)
	g.Expect(allowed).To(BeTrue())
	allowed, _ = e.admit(t, "CREATE", "pods", "system:kube-controller-manager", owned("batch/v1", "Job"), nil)
	g.Expect(allowed).To(BeTrue())
	allowed, _ = e.admit(t, "CREATE", "pods", "alice", owned("apps/v1", "ReplicaSet"), nil)
	g.Expect(allowed).To(BeFalse(), "another user")
	allowed, _ = e.admit(t, "CREATE", "pods", rsController, owned("example.com/v1", "ReplicaSet"), nil)
	g.Expect(allowed).To(BeFalse(), "an owner of another group")
	allowed, _ = e.admit(t, "CREATE", "pods", rsController, podOf("ns", nil, "evil.io/web:1"), nil)
	g.Expect(allowed).To(BeFalse(), "no owner")
	allowed, _ = e.admit(t, "CREATE", "replicasets", rsController, owned("apps/v1", "ReplicaSet"), nil)
	g.Expect(allowed).To(BeFalse(), "a ReplicaSet owned by a ReplicaSet")
}

// Warn warns and never refuses on an error; Audit, no generated rule or an exempt namespace
// generate nothing; a bad glob is the policy's error.
func TestGenerateSaysWhyNothingIsGenerated(t *testing.T) {
	g := NewWithT(t)
	base := spellingPolicies()[0]
	warn := base.DeepCopy()
	warn.Spec.Enforcement = securityv1alpha1.EnforcementWarn
	objs := generate(t, warn)
	g.Expect(*objs.Policy.Spec.FailurePolicy).To(Equal(admissionregistrationv1.Ignore))
	g.Expect(objs.Binding.Spec.ValidationActions).To(ConsistOf(admissionregistrationv1.Warn))

	audit := base.DeepCopy()
	audit.Spec.Enforcement = securityv1alpha1.EnforcementAudit
	_, err := Generate(audit, nil, testOptions)
	g.Expect(err).To(MatchError(ErrNotEnforcing))

	vulnsOnly := base.DeepCopy()
	vulnsOnly.Spec.Rules = securityv1alpha1.PolicyRules{Tags: &securityv1alpha1.TagRule{},
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: new(int32)}}
	_, err = Generate(vulnsOnly, nil, testOptions)
	g.Expect(err).To(MatchError(ErrNoGeneratedRules))

	exempt := base.DeepCopy()
	exempt.Namespace = "monitoring"
	_, err = Generate(exempt, nil, Options{ExemptNamespaces: []string{"monitoring"}})
	g.Expect(err).To(MatchError(ErrExemptNamespace))

	bad := base.DeepCopy()
	bad.Spec.Rules.Registries.Allowed = []string{"*"}
	_, err = Generate(bad, nil, testOptions)
	g.Expect(err).To(MatchError(ContainSubstring("registries.allowed")))
}

// Names: one per policy, never two policies' the same, never longer than the API takes.
func TestNames(t *testing.T) {
	g := NewWithT(t)
	g.Expect(Name("ImagePolicy/shop/trusted")).To(Equal("imageguard.ns.shop.trusted"))
	g.Expect(Name("ClusterImagePolicy/trusted")).To(Equal("imageguard.cluster.trusted"))
	g.Expect(Name("ImagePolicy/cluster/x")).NotTo(Equal(Name("ClusterImagePolicy/x")))
	// A namespace has no '.', so the first '.' after imageguard.ns. ends it.
	long := Name("ImagePolicy/" + strings.Repeat("n", 63) + "/" + strings.Repeat("p", 253))
	g.Expect(len(long)).To(BeNumerically("<=", 253))
	g.Expect(long).NotTo(Equal(Name("ImagePolicy/" + strings.Repeat("n", 63) + "/" + strings.Repeat("p", 252))))
}

// An admitted pod whose references are canonical costs the API server the fast path alone, in
// the validation and in the message it evaluates for every request: none of the parsing steps.
func TestAdmittedRequestsTakeTheFastPath(t *testing.T) {
	g := NewWithT(t)
	for _, pol := range spellingPolicies() {
		e := newEvaluator(t, generate(t, pol).Policy)
		pod := podOf(pol.Namespace, nil, "registry.example.com/app:v1@"+digest, "docker.io/library/nginx:1.25@"+digest)
		allowed, msg := e.admit(t, "CREATE", "pods", "alice", pod, nil)
		g.Expect(allowed).To(BeTrue(), msg)
		g.Expect(e.evaluated).To(Equal([]string{"spec", "refs", "fastParts", "fastImages", "fastPass", "spec", "refs", "fastParts", "fastImages", "fastPass"}), pol.Name)
	}
	// A spelling that is not canonical takes the whole way, and is admitted all the same.
	e := newEvaluator(t, generate(t, spellingPolicies()[0]).Policy)
	allowed, msg := e.admit(t, "CREATE", "pods", "alice", podOf("ns", nil, "REGISTRY.example.com:443/app:1"), nil)
	g.Expect(allowed).To(BeTrue(), msg)
	g.Expect(e.evaluated).To(ContainElement("images"))
}
