package vap

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/workload"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// spellings are references a pod may name: every way of spelling one image (ports, case, Docker
// Hub's names, library/, digests with tags, IPv6) and what is near the grammar's edges. The
// generated policies and internal/policy must give each the same verdict.
var spellings = []string{
	"nginx", "nginx:1.25", "library/nginx", "docker.io/nginx", "docker.io/library/nginx:1.25", "index.docker.io/nginx",
	"registry-1.docker.io/library/nginx:1", "registry.hub.docker.com/library/nginx:1", "DOCKER.IO/library/nginx:1",
	"docker.io:443/nginx:1", "Index.Docker.IO:0443/nginx:1", "docker.io:5000/nginx:1", "bitnami/redis:7",
	"docker.io/bitnami/redis:7", "nginx@" + digest, "nginx:1.25@" + digest,
	"registry.example.com/app:1", "REGISTRY.EXAMPLE.COM/app:1", "Registry.Example.Com:443/app:1",
	"registry.example.com:0443/app:1", "registry.example.com:05000/app:1", "registry.example.com:5000/app:1",
	"registry.example.com/app", "registry.example.com/app:latest", "registry.example.com/app:LATEST",
	"registry.example.com/app@" + digest, "registry.example.com/app:1@" + digest, "registry.example.com/app:latest@" + digest,
	"registry.example.com/team/app:v1", "registry.example.com/team/app:1", "registry.example.com/team/sub/app:v1",
	"registry.example.com.evil.io/app:1", "evil.io/registry.example.com/app:1", "evil.io/app:1",
	"localhost/app:1", "localhost:5000/app:1", "LOCALHOST:5000/app:1", "LocalHost/app:1", "localhost:5000",
	"[2001:db8::1]:5000/app:1", "[2001:DB8:0::1]:5000/app:1", "[2001:0db8::0001]:05000/app:1", "[2001:db8::1]/app:1",
	"[2001:db8::1]:443/app:1", "[::1]:5000/app", "[::ffff:1.2.3.4]/app:1", "[::ffff:102:304]/app:1", "[:::1]/app:1",
	"192.168.0.1:5000/app:1", "1.2.3.4/app", "my.app:v1", "my.app/x:1", "host.com:5000", "my-reg:5000/app:1",
	"Nginx", "nginx:", ":1", "a", "ab", "registry.example.com/a", "registry.example.com/ab", "registry.example.com:/app",
	"reg_istry.example.com/app", "registry.example.com/app:.v1", "registry.example.com/app:-v1",
	"registry.example.com/app:v1_x.y-z", "registry.example.com/app@sha512:" + strings.Repeat("a", 128),
	"registry.example.com/app@sha256:" + strings.ToUpper(digest[7:]), "registry.example.com/a__b/c-d/e.f:1",
	"registry.example.com/a___b:1", "registry.example.com/a--b:1", "registry.example.com/a-_b:1",
	"registry.example.com/" + strings.Repeat("a", 234), "registry.example.com/" + strings.Repeat("a", 235),
	"registry.example.com/app:" + strings.Repeat("t", 128), "registry.example.com/app:" + strings.Repeat("t", 129),
	" nginx", "nginx ", "nginx@" + digest + "@" + digest, "registry.example.com//app", "registry.example.com/app/",
	"-registry.example.com/app", "registry.example.com:99999/app:1", "registry.example.com:123456/app:1",
	"exämple.com/app:1", "registry.example.com/äpp:1", "",
}

// spellingPolicies judge the spellings: trusted registries with latest refused, digests required
// of one registry's images, and a glob with a tag part.
func spellingPolicies() []*securityv1alpha1.ImagePolicy {
	mk := func(name string, match securityv1alpha1.ImageMatch, rules securityv1alpha1.PolicyRules) *securityv1alpha1.ImagePolicy {
		return &securityv1alpha1.ImagePolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: securityv1alpha1.GroupVersion.String(), Kind: "ImagePolicy"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "spell-" + name, UID: types.UID(name + "-uid"), Generation: 1},
			Spec:       securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce, Match: match, Rules: rules},
		}
	}
	return []*securityv1alpha1.ImagePolicy{
		mk("trusted", securityv1alpha1.ImageMatch{}, securityv1alpha1.PolicyRules{
			Registries: &securityv1alpha1.RegistryRule{Allowed: []string{
				"registry.example.com/*", "nginx", "bitnami/*", "[2001:DB8::1]:5000/**", "localhost:5000/**", "Index.Docker.IO/library/*",
			}},
			Tags: &securityv1alpha1.TagRule{DisallowLatest: true},
		}),
		mk("pinned", securityv1alpha1.ImageMatch{Images: []string{"REGISTRY.example.com:443/**", "docker.io/**"}}, securityv1alpha1.PolicyRules{
			Tags: &securityv1alpha1.TagRule{RequireDigest: true, DisallowLatest: true},
		}),
		mk("tagged", securityv1alpha1.ImageMatch{}, securityv1alpha1.PolicyRules{
			Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/team/*:v*", "*.example.com/**", "docker.io/**"}},
		}),
		// Globs the generated CEL compares literally: exact, a prefix, a prefix without '/' after it.
		mk("plain", securityv1alpha1.ImageMatch{Images: []string{"registry.example.com/team**", "nginx:1.*", "localhost:5000/**"}}, securityv1alpha1.PolicyRules{
			Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/team/app:v1", "docker.io/library/redis",
				"registry.example.com/team/*", "nginx:1.*", "LOCALHOST:5000/app"}},
			Tags: &securityv1alpha1.TagRule{DisallowLatest: true},
		}),
	}
}

var testNow = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// webhook decides as ImageGuard's webhook does, under one policy alone.
type webhook struct {
	state     *admission.CacheState
	namespace string
}

func newWebhook(t testing.TB, pol client.Object) *webhook {
	t.Helper()
	b := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(pol,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pol.GetNamespace(), Labels: map[string]string{"kubernetes.io/metadata.name": pol.GetNamespace()}}})
	for name, index := range workload.ReportIndexes {
		b = b.WithIndex(&securityv1alpha1.ImageScanReport{}, name, index)
	}
	c := b.Build()
	return &webhook{namespace: pol.GetNamespace(),
		state: &admission.CacheState{Gatherer: workload.NewGatherer(c, ""), Reader: c, Secrets: c, Clock: clocktesting.NewFakePassiveClock(testNow)}}
}

// decide is the webhook's decision on containers of an object with labels.
func (w *webhook) decide(t testing.TB, labels map[string]string, containers []workload.Container) admission.Decision {
	t.Helper()
	d, err := admission.Decide(context.Background(), w.state, admission.Request{
		Endpoint: admission.EndpointValidate, Namespace: w.namespace, Labels: labels, PodLabels: labels, Containers: containers,
	}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// podOf is a pod in namespace running images, one container each.
func podOf(namespace string, labels map[string]string, images ...string) *corev1.Pod {
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: namespace, Labels: labels}}
	for i, img := range images {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: img})
	}
	return pod
}

// agree reports how the webhook's decision and the generated policy's differ ("" if they agree):
// both refuse or both admit, and a refusal for a well-formed reference has the same message.
func agree(d admission.Decision, allowed bool, message string) string {
	switch {
	case d.Allowed != allowed:
		return fmt.Sprintf("webhook allowed=%v (%s), generated policy allowed=%v (%s)", d.Allowed, d.Message, allowed, message)
	case d.Allowed:
		return ""
	case strings.Contains(d.Message, "malformed image reference"):
		if !strings.Contains(message, "malformed image reference") {
			return fmt.Sprintf("webhook: %s; generated policy: %s", d.Message, message)
		}
		return ""
	case !strings.HasSuffix(message, d.Message[len("denied by ImageGuard: "):]):
		return fmt.Sprintf("messages differ:\n webhook:   %s\n generated: %s", d.Message, message)
	}
	return ""
}
