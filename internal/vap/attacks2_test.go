package vap

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/imageguard/imageguard/internal/policy"
)

// podOfN is a pod in namespace of n containers, each running img.
func podOfN(namespace, img string, n int) *corev1.Pod {
	pod := podOf(namespace, nil)
	for i := range n {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: img})
	}
	return pod
}

// Found in a second adversarial review: the steps that judge the globs ("judged", "judged1", ...)
// write a chunk of match.images (up to chunkSize, half CEL's limit) and a chunk of
// registries.allowed (up to chunkSize too) in ONE expression. A legal policy whose match.images and
// registries.allowed are both at the CRD's limits (64 globs of 512 characters each) makes that
// expression longer than 100,000 code points, and Generate gives up (TooLarge): nothing enforces
// the policy while the webhook is down, though each list alone fits (TestAttackLongGlobsExceedCELExpressionSize).
func TestAttack2MatchAndAllowedAtLimitsTooLarge(t *testing.T) {
	pol := longGlobPolicy("attack2-both")
	pol.Spec.Match.Images = append([]string{}, pol.Spec.Rules.Registries.Allowed...)
	objs, err := Generate(pol, &corev1.Namespace{}, testOptions)
	if errors.Is(err, ErrTooLarge) {
		for _, what := range [][]string{pol.Spec.Match.Images, pol.Spec.Rules.Registries.Allowed} {
			n := 0
			for _, c := range chunks(compile(t, what), "i.repo", "i.tag") {
				n = max(n, len(c))
			}
			t.Logf("largest chunk: %d characters", n)
		}
		t.Fatalf("a legal policy (match.images and registries.allowed at the CRD's limits) gets no ValidatingAdmissionPolicy: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	e := newEvaluator(t, objs.Policy)
	w := newWebhook(t, pol)
	for _, ref := range []string{"registry.example.com/app:1", "evil.io/app:1", "mirror-00.example.com/x/y:1"} {
		pod := podOf(pol.Namespace, nil, ref)
		allowed, msg := e.admit(t, "CREATE", "pods", "alice", pod, nil)
		if diff := agree(w.decide(t, nil, containersOfPod(pod)), allowed, msg); diff != "" {
			t.Errorf("%q: %s", ref, diff)
		}
	}
}

// Found in a second adversarial review (cost): the fast path, which keeps the API server's cost of
// ordinary pods low, is left out of a policy whose globs are long (the first review's
// longGlobPolicy). Every image then goes through the judged steps, each of which evaluates a
// chunk of long regular expressions per image: a pod of 40 ordinary, trusted containers
// ("registry.example.com/app:1"), or of 4 with a long (legal, 255-character) name, passes the
// per-expression cost limit, and failurePolicy Fail refuses what the webhook admits.
func TestAttack2LongGlobsOrdinaryPodCost(t *testing.T) {
	pol := longGlobPolicy("attack2-cost")
	e := newEvaluator(t, generate(t, pol).Policy)
	w := newWebhook(t, pol)
	for _, pod := range []*corev1.Pod{
		podOfN(pol.Namespace, "registry.example.com/app:1", 40),
		podOfN(pol.Namespace, "registry.example.com/"+strings.Repeat("a", 234)+":1", 4),
	} {
		d := w.decide(t, nil, containersOfPod(pod))
		if !d.Allowed {
			t.Fatalf("webhook refuses: %.300s", d.Message)
		}
		if allowed, msg := e.admit(t, "CREATE", "pods", "alice", pod, nil); !allowed {
			t.Errorf("%d containers of %.40s...: the generated policy refuses what the webhook admits: %.300s",
				len(pod.Spec.Containers), pod.Spec.Containers[0].Image, msg)
		}
	}
}

// The same, on a real API server.
func TestAttack2APIServerLongGlobsOrdinaryPodCost(t *testing.T) {
	pol := longGlobPolicy("attack2-cost-api")
	install(t, pol, nil, "evil.io/app:1")
	for _, pod := range []*corev1.Pod{
		podOfN(pol.Namespace, "registry.example.com/app:1", 40),
		podOfN(pol.Namespace, "registry.example.com/"+strings.Repeat("a", 234)+":1", 4),
	} {
		allowed, msg, err := createPod(env.Client, pod)
		if err != nil {
			t.Fatal(err)
		}
		if !allowed {
			t.Errorf("%d containers of %.40s...: the API server refuses a pod the webhook admits: %.400s",
				len(pod.Spec.Containers), pod.Spec.Containers[0].Image, errorOf(msg))
		}
	}
}

// Found in a second adversarial review (cost): the first review's many-containers attack
// (TestAttackManyContainersExceedCostLimit) was fixed for canonical references only. The same pod
// with the host spelt in another case (which ParseImage, and so the webhook, reads as the same
// trusted image) goes the whole parsing way: 250 such references pass CEL's per-expression cost
// limit and are refused (failurePolicy Fail; documented in docs/admission.md). This test holds the
// documented bound: 100 of them are admitted.
func TestAttack2ManyNonCanonicalContainersCost(t *testing.T) {
	pol := spellingPolicies()[0].DeepCopy()
	pol.Name, pol.Namespace = "attack2-cost-case", "attack2-cost-case"
	pod := podOfN(pol.Namespace, "Registry.example.com/"+strings.Repeat("a", 230)+":"+strings.Repeat("t", 128), 100)
	admittedByBoth(t, pol, pod)
}

func compile(t *testing.T, patterns []string) []policy.Glob {
	t.Helper()
	g, err := policy.CompileGlobs(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// Tried in a second adversarial review, and kept: globs of every form Glob.Form takes (exact,
// "**" prefix, "*" prefix, the rest by regular expression), with wildcards in the host, tag parts,
// "**" alone, regular-expression metacharacters and non-ASCII, give the generated CEL the
// webhook's verdict on references that sit at each form's edges.
func TestAttack2GlobFormsAgree(t *testing.T) {
	globs := []string{"**", "registry.example.com/app", "registry.example.com/app*", "registry.example.com/app**",
		"registry.example.com/team/*", "registry.example.com/app:*", "registry.example.com/app:v1*", "registry.example.com/app:**",
		"registry.example.com/app:v1", "*.example.com/app*", "registry.*.com/**", "registry.example.com*", "registry.example.com*/**",
		"registry.example.com:5000/*", "nginx*", "nginx:1*", "library/*", "bitnami/**", "docker.io/*",
		"registry.example.com/a.b*", "registry.example.com/a+b*", "registry.example.com/(a|b)**", "registry.example.com/[ab]*",
		"régistry.example.com/**", "registry.example.com/äpp*", "REGISTRY.EXAMPLE.COM/App*", "\u212Aeg.example.com/**",
		"registry.example.com/a\\b*", "registry.example.com/a$*", "registry.example.com/^a*"}
	refs := []string{"registry.example.com/app", "registry.example.com/app:v1", "registry.example.com/app:v10", "registry.example.com/app2:1",
		"registry.example.com/app/x:1", "registry.example.com/appx/y:v1", "registry.example.com/team/a:1", "registry.example.com/team/a/b:1",
		"registry.example.com/app@" + digest, "registry.example.com/app:v1@" + digest, "x.example.com/app:1", "x.example.com/appy:1",
		"x.example.com/app/y:1", "registry.evil.com/x:1", "registry.example.com.evil.io/app:1", "registry.example.com:5000/app:1",
		"registry.example.com:5000/a/b:1", "nginx", "nginx:1.25", "nginxx:1", "library/nginx:1", "bitnami/redis:7", "bitnami/a/b:1",
		"docker.io/x/y:1", "registry.example.com/a.b:1", "registry.example.com/aab:1", "registry.example.com/a.bc/d:1", "keg.example.com/x:1",
		"registry.example.com/a:1", "registry.example.com/b:1"}
	for _, g := range globs {
		pol := spellingPolicies()[0].DeepCopy()
		pol.Spec.Rules.Registries.Allowed = []string{g}
		pol.Spec.Rules.Tags = nil
		e := newEvaluator(t, generate(t, pol).Policy)
		w := newWebhook(t, pol)
		for _, ref := range refs {
			pod := podOf(pol.Namespace, nil, ref)
			allowed, msg := e.admit(t, "CREATE", "pods", "alice", pod, nil)
			if diff := agree(w.decide(t, nil, containersOfPod(pod)), allowed, msg); diff != "" {
				t.Errorf("glob %q, %q: %s", g, ref, diff)
			}
		}
		// And as match.images.
		pol.Spec.Match.Images = []string{g}
		pol.Spec.Rules.Registries.Allowed = []string{"none.example.com/x"}
		e = newEvaluator(t, generate(t, pol).Policy)
		w = newWebhook(t, pol)
		for _, ref := range refs {
			pod := podOf(pol.Namespace, nil, ref)
			allowed, msg := e.admit(t, "CREATE", "pods", "alice", pod, nil)
			if diff := agree(w.decide(t, nil, containersOfPod(pod)), allowed, msg); diff != "" {
				t.Errorf("match.images %q, %q: %s", g, ref, diff)
			}
		}
	}
}

// errorOf is the API server's reason in msg, without the expression it quotes.
func errorOf(msg string) string {
	if _, after, ok := strings.Cut(msg, "resulted in error: "); ok {
		return after
	}
	return msg
}
