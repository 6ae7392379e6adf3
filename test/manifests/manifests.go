// Package manifests checks rendered install manifests (helm template, kubectl kustomize): split by
// kind, least-privilege RBAC, a restricted Deployment. The chart and kustomize tests share it.
package manifests

import (
	"slices"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// ByKind splits rendered YAML manifests (helm template, kubectl kustomize) by kind.
func ByKind(t testing.TB, rendered string) map[string][][]byte {
	t.Helper()
	out := map[string][][]byte{}
	for _, doc := range strings.Split(rendered, "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("bad document: %v\n%s", err, doc)
		}
		if meta.Kind != "" {
			out[meta.Kind] = append(out[meta.Kind], []byte(doc))
		}
	}
	return out
}

// ExpectLeastPrivilege checks a rendered ClusterRole: no wildcard anywhere, and Secrets only read
// by name (no cluster-wide list or watch).
func ExpectLeastPrivilege(g Gomega, manifest []byte) {
	role := &rbacv1.ClusterRole{}
	g.Expect(yaml.Unmarshal(manifest, role)).To(Succeed())
	for _, rule := range role.Rules {
		for _, list := range [][]string{rule.APIGroups, rule.Resources, rule.Verbs} {
			g.Expect(list).NotTo(ContainElement("*"))
		}
		if slices.Contains(rule.Resources, "secrets") {
			g.Expect(rule.Verbs).To(Equal([]string{"get"}), "no cluster-wide list or watch of Secrets")
		}
	}
}

// ExpectRestrictedDeployment checks a rendered Deployment runs non-root, with RuntimeDefault
// seccomp, a read-only root filesystem, no privilege escalation and no capabilities, and returns
// it for further checks.
func ExpectRestrictedDeployment(g Gomega, manifest []byte) *appsv1.Deployment {
	d := &appsv1.Deployment{}
	g.Expect(yaml.Unmarshal(manifest, d)).To(Succeed())
	pod := d.Spec.Template.Spec
	g.Expect(*pod.SecurityContext.RunAsNonRoot).To(BeTrue())
	g.Expect(pod.SecurityContext.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
	sc := pod.Containers[0].SecurityContext
	g.Expect(*sc.ReadOnlyRootFilesystem).To(BeTrue())
	g.Expect(*sc.AllowPrivilegeEscalation).To(BeFalse())
	g.Expect(sc.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")))
	return d
}
