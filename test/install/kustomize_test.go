// Package install tests the install manifests of config/default against a real API server.
package install

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/testenv"
	"github.com/imageguard/imageguard/test/manifests"
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
	return out, manifests.ByKind(t, out)
}

func TestDefaultInstall(t *testing.T) {
	g := NewWithT(t)
	rendered, byKind := render(t)
	for kind, n := range map[string]int{
		"Namespace": 1, "CustomResourceDefinition": 5, "ServiceAccount": 1, "ClusterRole": 1,
		"ClusterRoleBinding": 1, "Role": 1, "RoleBinding": 1, "Deployment": 1, "Service": 1,
	} {
		g.Expect(byKind[kind]).To(HaveLen(n), "kind %s", kind)
	}

	// Least privilege, and a non-root, read-only, capability-free container.
	manifests.ExpectLeastPrivilege(g, byKind["ClusterRole"][0])
	manifests.ExpectRestrictedDeployment(g, byKind["Deployment"][0])

	// The API server accepts every object as it is: the install applies for real.
	cmd := env.KubectlCmd(context.Background(), "apply", "--server-side", "-f", "-")
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stderr = strings.NewReader(rendered), &stderr
	g.Expect(cmd.Run()).To(Succeed(), stderr.String())
}
