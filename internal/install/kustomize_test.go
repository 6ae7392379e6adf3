// Package install tests the install manifests of config/default against a real API server.
package install

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/imageguard/imageguard/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	var err error
	env, err = testenv.Start(testenv.Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot start the control plane: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

// render returns config/default as kustomize renders it, split into documents by kind.
func render(t *testing.T) (string, map[string][][]byte) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := env.RunKubectl(context.Background(), "kustomize", root+"/config/default")
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[string][][]byte{}
	for _, doc := range strings.Split(out, "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("bad document: %v", err)
		}
		byKind[meta.Kind] = append(byKind[meta.Kind], []byte(doc))
	}
	return out, byKind
}

func TestDefaultInstall(t *testing.T) {
	g := NewWithT(t)
	rendered, byKind := render(t)
	for kind, n := range map[string]int{
		"Namespace": 1, "CustomResourceDefinition": 3, "ServiceAccount": 1, "ClusterRole": 1,
		"ClusterRoleBinding": 1, "Role": 1, "RoleBinding": 1, "Deployment": 1, "Service": 1,
	} {
		g.Expect(byKind[kind]).To(HaveLen(n), "kind %s", kind)
	}

	// Least privilege: no wildcard, and Secrets only read by name.
	role := &rbacv1.ClusterRole{}
	g.Expect(yaml.Unmarshal(byKind["ClusterRole"][0], role)).To(Succeed())
	for _, rule := range role.Rules {
		for _, list := range [][]string{rule.APIGroups, rule.Resources, rule.Verbs} {
			g.Expect(list).NotTo(ContainElement("*"))
		}
		if slices.Contains(rule.Resources, "secrets") {
			g.Expect(rule.Verbs).To(Equal([]string{"get"}))
		}
	}

	// A non-root, read-only, capability-free container.
	d := &appsv1.Deployment{}
	g.Expect(yaml.Unmarshal(byKind["Deployment"][0], d)).To(Succeed())
	pod := d.Spec.Template.Spec
	g.Expect(*pod.SecurityContext.RunAsNonRoot).To(BeTrue())
	g.Expect(pod.SecurityContext.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
	c := pod.Containers[0].SecurityContext
	g.Expect(*c.ReadOnlyRootFilesystem).To(BeTrue())
	g.Expect(*c.AllowPrivilegeEscalation).To(BeFalse())
	g.Expect(c.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")))

	// The API server accepts every object as it is: the install applies for real.
	cmd := env.KubectlCmd(context.Background(), "apply", "--server-side", "-f", "-")
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stderr = strings.NewReader(rendered), &stderr
	g.Expect(cmd.Run()).To(Succeed(), stderr.String())
}
