package vap

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
)

// longGlobPolicy is a legal policy (registries.allowed: 64 items of at most 512 characters, as the
// CRD allows) whose last glob trusts registry.example.com: every pod from there passes the webhook.
func longGlobPolicy(name string) *securityv1alpha1.ImagePolicy {
	pol := spellingPolicies()[0].DeepCopy()
	pol.Name, pol.Namespace = name, name
	var allowed []string
	for i := range 63 {
		g := fmt.Sprintf("mirror-%02d.example.com/", i)
		for len(g) < 509 {
			g += "*."
		}
		allowed = append(allowed, g[:509]+"/**")
	}
	pol.Spec.Rules.Registries.Allowed = append(allowed, "registry.example.com/**")
	return pol
}

// Found in an adversarial review: a legal policy whose registries.allowed is long makes generated expressions longer than
// CEL's 100,000 code points: they cannot compile.
func TestAttackLongGlobsExceedCELExpressionSize(t *testing.T) {
	pol := longGlobPolicy("attack-globs")
	objs := generate(t, pol)
	env := newEvaluatorEnv(t, objs.Policy)
	for _, v := range objs.Policy.Spec.Variables {
		if _, iss := env.Compile(v.Expression); iss.Err() != nil {
			t.Errorf("variable %s (%d characters) does not compile: %.200v", v.Name, len(v.Expression), iss.Err())
		}
	}
	// The webhook admits a trusted image.
	d := newWebhook(t, pol).decide(t, nil, containersOfPod(podOf(pol.Namespace, nil, "registry.example.com/app:1")))
	if !d.Allowed {
		t.Fatalf("webhook refuses: %s", d.Message)
	}
}

// Found in an adversarial review (real API server): the policy of TestAttackLongGlobsExceedCELExpressionSize. Either the
// API server refuses the generated objects (then nothing enforces while the webhook is down), or
// it takes them and refuses every pod, trusted or not (the compile error meets failurePolicy Fail).
func TestAttackAPIServerLongGlobs(t *testing.T) {
	ctx := context.Background()
	pol := longGlobPolicy("attack-globs-api")
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pol.Namespace}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	objs, err := Generate(pol, ns, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, objs.Policy); err != nil {
		t.Fatalf("the API server refuses the generated policy: nothing enforces %s while the webhook is down: %.600v", pol.Name, err)
	}
	if err := env.Client.Create(ctx, objs.Binding); err != nil {
		t.Fatalf("the API server refuses the binding: %.600v", err)
	}
	var allowed bool
	var msg string
	// Wait until the binding is in force (an untrusted image is refused).
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if ok, _, _ := createPod(env.Client, podOf(pol.Namespace, nil, "evil.io/app:1")); !ok {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	allowed, msg, err = createPod(env.Client, podOf(pol.Namespace, nil, "registry.example.com/app:1"))
	if err != nil {
		t.Fatal(err)
	}
	if !allowed {
		t.Errorf("the API server refuses a trusted image the webhook admits: %.600s", msg)
	}
}

// Found in an adversarial review: a reference ImageGuard refuses as malformed in a pod the policy's match.selector does not
// select. The webhook parses every image before it looks for policies, and refuses; the generated
// policy admits what its selector does not pick. "MYREG/app:1" is pulled by containerd from the
// host MYREG (Docker's grammar takes an upper-case first element as a host).
func TestAttackMalformedImageInUnselectedPod(t *testing.T) {
	pol := spellingPolicies()[0].DeepCopy()
	pol.Spec.Match.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "prod"}}
	e := newEvaluator(t, generate(t, pol).Policy)
	w := newWebhook(t, pol)
	labels := map[string]string{"tier": "dev"}
	for _, ref := range []string{"MYREG/app:1", "evil.io/App:1"} {
		pod := podOf(pol.Namespace, labels, ref)
		d := w.decide(t, labels, containersOfPod(pod))
		allowed, msg := e.admit(t, "CREATE", "pods", "alice", pod, nil)
		if diff := agree(d, allowed, msg); diff != "" {
			t.Errorf("%q: %s", ref, diff)
		}
	}
}

// manyContainersPod is a pod of n containers, each from the trusted registry, named by a
// well-formed reference longer than the fast path takes (255 characters).
func manyContainersPod(namespace string, n int) *corev1.Pod {
	img := "registry.example.com/" + strings.Repeat("a", 230) + ":" + strings.Repeat("t", 128)
	pod := podOf(namespace, nil)
	for i := range n {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: img})
	}
	return pod
}

// Found in an adversarial review (cost): a legal pod of many containers with long, well-formed, trusted references. The
// webhook admits it; the generated policy's parsing steps go over CEL's per-expression cost limit,
// and failurePolicy Fail refuses it (and a Warn policy would say nothing).
func TestAttackManyContainersExceedCostLimit(t *testing.T) {
	pol := spellingPolicies()[0].DeepCopy()
	pol.Name, pol.Namespace = "attack-cost", "attack-cost"
	pod := manyContainersPod(pol.Namespace, 250)
	admittedByBoth(t, pol, pod)
}

// admittedByBoth checks that the webhook admits pod under pol, and so does the API server with
// the objects generated from pol.
func admittedByBoth(t *testing.T, pol *securityv1alpha1.ImagePolicy, pod *corev1.Pod) {
	t.Helper()
	if d := newWebhook(t, pol).decide(t, nil, containersOfPod(pod)); !d.Allowed {
		t.Fatalf("webhook refuses: %.300s", d.Message)
	}
	install(t, pol, nil, "evil.io/app:1")
	allowed, msg, err := createPod(env.Client, pod)
	if err != nil {
		t.Fatalf("the API server's validation refuses the pod: %.300v", err)
	}
	if !allowed {
		t.Errorf("the API server refuses, with %d containers, a pod the webhook admits: %.400s", len(pod.Spec.Containers), msg)
	}
}

// Tried in an adversarial review, and kept: the fast path reads every reference it takes (form 'h' or 'd') as ParseImage
// does: repository, tag and digest, over hosts, ports, Docker Hub's names, paths, tags and digests.
func TestAttackFastPathAgreesWithParseImage(t *testing.T) {
	pol := spellingPolicies()[0]
	objs := generate(t, pol)
	e := newEvaluator(t, objs.Policy)
	var fastExpr string
	for _, v := range objs.Policy.Spec.Variables {
		if v.Name == "fastImages" {
			fastExpr = v.Expression
		}
	}
	hosts := []string{"", "registry.example.com/", "registry.example.com:443/", "registry.example.com:4430/", "registry.example.com:5000/",
		"docker.io/", "docker.io:5000/", "docker.io:443/", "index.docker.io/", "index.docker.io:5000/", "localhost/", "localhost:5000/",
		"localhost:443/", "1.2.3.4/", "1.2.3.4:80/", "a.b/", "ab.io:65535/", "ab.io:99999/", "x-y.z/"}
	paths := []string{"nginx", "library/nginx", "ab", "a", "ab/c", "a/bc", "ab.c", "ab_c/d", "localhost", "ab--c/d.e", "a.b/c"}
	suffixes := []string{"", ":1", ":latest", ":5000", ":v1.2-x_y", "@" + digest, ":1@" + digest, ":latest@" + digest}
	checked := 0
	for _, h := range hosts {
		for _, p := range paths {
			for _, sfx := range suffixes {
				r := h + p + sfx
				pod := podOf(pol.Namespace, nil, r)
				act := map[string]any{"object": toJSONValue(t, pod), "oldObject": nil,
					"request": map[string]any{"operation": "CREATE", "resource": map[string]any{"resource": "pods"}, "userInfo": map[string]any{"username": "alice"}}}
				for _, v := range objs.Policy.Spec.Variables {
					expr := v.Expression
					var once sync.Once
					var val ref.Val
					act["variables."+v.Name] = func() ref.Val { once.Do(func() { val = e.eval(expr, act) }); return val }
				}
				out := e.eval(fastExpr, act)
				if types.IsError(out) {
					t.Fatalf("%q: %v", r, out)
				}
				got := out.Value().([]ref.Val)[0].Value().([]ref.Val)
				parts := make([]string, len(got))
				for i, g := range got {
					parts[i] = g.Value().(string)
				}
				if parts[3] == "" {
					continue
				}
				checked++
				img, err := policy.ParseImage(r)
				if err != nil {
					t.Errorf("%q: the fast path takes a reference ParseImage refuses: %v", r, err)
					continue
				}
				if parts[0] != img.Repository || parts[1] != img.Tag || parts[2] != img.Digest {
					t.Errorf("%q: fast path %v, ParseImage %s %q %q", r, parts[:3], img.Repository, img.Tag, img.Digest)
				}
			}
		}
	}
	t.Logf("%d references taken by the fast path", checked)
}
