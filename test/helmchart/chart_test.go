// Package helmchart tests charts/imageguard with the pinned helm (bin/, built from the Go module
// proxy by `make helm`): lint, rendering with default and all optional values, and a real
// install, upgrade and uninstall on the test control plane.
package helmchart

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/testenv"
	"github.com/imageguard/imageguard/test/manifests"
)

var (
	env   *testenv.Env
	root  string
	helm  string
	chart string
)

// allOptional turns on every optional feature of the chart.
var allOptional = []string{
	"--set", "replicas=2", "--set", "policyReportCRDs.install=true", "--set", "openReportsCRDs.install=true",
	"--set", "controller.policyReports={wgpolicyk8s,openreports}",
	"--set", "metrics.serviceMonitor.enabled=true", "--set", "networkPolicy.enabled=true",
	"--set", "podDisruptionBudget.enabled=true", "--set", "controller.dbPath=/db",
	"--set", "controller.insecureRegistries={registry.internal:5000}", "--set", "admission.certManager.enabled=true",
	"--set", "admission.clientCA.configMap=apiserver-client-ca", "--set", "admission.decisionBudget=2500ms",
	"--set", "metrics.readers[0].name=prometheus", "--set", "metrics.readers[0].namespace=monitoring",
	"--set", "networkPolicy.webhookFrom[0].ipBlock.cidr=10.0.0.0/24",
}

func TestMain(m *testing.M) {
	var err error
	if root, err = testenv.RepoRoot(); err != nil {
		panic(err)
	}
	chart = filepath.Join(root, "charts", "imageguard")
	if helm, err = helmBinary(); err != nil {
		fmt.Fprintf(os.Stderr, "no helm: %v\n", err)
		os.Exit(1)
	}
	if env, err = testenv.Start(testenv.Options{NoCRDs: true}); err != nil {
		fmt.Fprintf(os.Stderr, "cannot start the control plane: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

// helmBinary returns $HELM (make test sets it), else builds the pinned helm with `make helm`.
func helmBinary() (string, error) {
	if h := os.Getenv("HELM"); h != "" {
		return h, nil
	}
	cmd := exec.Command("make", "-s", "--no-print-directory", "helm")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("make helm: %w: %s", err, out)
	}
	matches, _ := filepath.Glob(filepath.Join(root, "bin", "helm-*"))
	if len(matches) == 0 {
		return "", fmt.Errorf("make helm built nothing in bin/")
	}
	return matches[0], nil
}

func runHelm(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(helm, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+env.Kubeconfig, "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// documents splits rendered manifests by kind.
func documents(t *testing.T, rendered string) map[string][][]byte {
	return manifests.ByKind(t, rendered)
}

func TestLint(t *testing.T) {
	runHelm(t, "lint", "--strict", chart)
	runHelm(t, append([]string{"lint", "--strict", chart}, allOptional...)...)
}

func TestTemplate(t *testing.T) {
	tests := map[string]struct {
		args  []string
		kinds map[string]int
	}{
		"default values": {kinds: map[string]int{
			// The manager's, the webhook certificate keeper's, and who may read the metrics.
			"CustomResourceDefinition": 5, "ServiceAccount": 1, "ClusterRole": 3, "ClusterRoleBinding": 2,
			// Metrics, webhook and the registry notification receiver.
			"Role": 2, "RoleBinding": 2, "Deployment": 1, "Service": 3, "ValidatingWebhookConfiguration": 1,
		}},
		"every optional feature": {args: allOptional, kinds: map[string]int{
			"CustomResourceDefinition": 9, "ServiceMonitor": 1, "PodDisruptionBudget": 1,
			"PersistentVolumeClaim": 0, "NetworkPolicy": 1, "Deployment": 1,
			// cert-manager issues the webhook certificate: ImageGuard needs no Secret rights.
			"Issuer": 1, "Certificate": 1, "ClusterRole": 2, "ClusterRoleBinding": 2, "Role": 1, "ValidatingWebhookConfiguration": 1,
		}},
		"persistence, one replica": {args: []string{"--set", "persistence.enabled=true"}, kinds: map[string]int{
			"PersistentVolumeClaim": 1, "Deployment": 1, "PodDisruptionBudget": 0,
		}},
		"admission off": {args: []string{"--set", "admission.enabled=false"}, kinds: map[string]int{
			"ClusterRole": 2, "Role": 1, "Service": 2, "ValidatingWebhookConfiguration": 0,
		}},
		"receiver off": {args: []string{"--set", "receiver.enabled=false"}, kinds: map[string]int{
			"Service": 2, "Deployment": 1,
		}},
		"metrics over plain HTTP": {args: []string{"--set", "metrics.secure=false"}, kinds: map[string]int{
			"ClusterRole": 2, "ClusterRoleBinding": 2,
		}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			docs := documents(t, runHelm(t, append([]string{"template", "ig", chart, "-n", "imageguard"}, tt.args...)...))
			for kind, n := range tt.kinds {
				g.Expect(docs[kind]).To(HaveLen(n), "kind %s", kind)
			}
			for _, raw := range docs["ClusterRole"] {
				manifests.ExpectLeastPrivilege(g, raw)
			}
			manifests.ExpectRestrictedDeployment(g, docs["Deployment"][0])
			for _, crd := range docs["CustomResourceDefinition"] {
				g.Expect(string(crd)).To(ContainSubstring("helm.sh/resource-policy: keep"))
			}
		})
	}
	// Replicas above one elect a leader.
	g := NewWithT(t)
	docs := documents(t, runHelm(t, append([]string{"template", "ig", chart}, allOptional...)...))
	d := &appsv1.Deployment{}
	g.Expect(yaml.Unmarshal(docs["Deployment"][0], d)).To(Succeed())
	g.Expect(d.Spec.Template.Spec.Containers[0].Args).To(ContainElements("--leader-elect=true", "--db-path=/db", "--insecure-registries=registry.internal:5000",
		"--webhook-client-ca=/var/run/imageguard/client-ca/ca.crt", "--admission-decision-budget=2500ms",
		"--admission-failure-policy=Ignore", "--metrics-secure=true", "--enable-http2=false"))
	monitor := string(docs["ServiceMonitor"][0])
	g.Expect(monitor).To(ContainSubstring("scheme: https"))
	g.Expect(monitor).To(ContainSubstring("bearerTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token"))
	policy := string(docs["NetworkPolicy"][0])
	g.Expect(policy).To(ContainSubstring("cidr: 10.0.0.0/24"))
}

// TestWebhookRulesMatchTheMarkers checks that the chart registers the webhooks controller-gen
// generates from internal/admission's markers: same names, paths, rules and side effects, with
// the chart's failure policy, timeout and namespace opt-outs.
func TestWebhookRulesMatchTheMarkers(t *testing.T) {
	g := NewWithT(t)
	raw, err := os.ReadFile(filepath.Join(chart, "..", "..", "config", "webhook", "manifests.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	want := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	g.Expect(yaml.Unmarshal(bytes.TrimPrefix(raw, []byte("---\n")), want)).To(Succeed())
	docs := documents(t, runHelm(t, "template", "ig", chart, "-n", "imageguard",
		"--set", "admission.failurePolicy=Fail", "--set", "admission.timeoutSeconds=3", "--set", "admission.exemptNamespaces={monitoring}"))
	got := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	g.Expect(yaml.Unmarshal(docs["ValidatingWebhookConfiguration"][0], got)).To(Succeed())
	g.Expect(got.Webhooks).To(HaveLen(len(want.Webhooks)))
	for i, w := range want.Webhooks {
		c := got.Webhooks[i]
		g.Expect(c.Name).To(Equal(w.Name))
		g.Expect(c.Rules).To(Equal(w.Rules), w.Name)
		g.Expect(*c.ClientConfig.Service.Path).To(Equal(*w.ClientConfig.Service.Path))
		g.Expect(*c.SideEffects).To(Equal(*w.SideEffects))
		g.Expect(*c.MatchPolicy).To(Equal(*w.MatchPolicy))
		g.Expect(c.AdmissionReviewVersions).To(Equal(w.AdmissionReviewVersions))
		g.Expect(*c.FailurePolicy).To(Equal(admissionregistrationv1.Fail))
		g.Expect(*c.TimeoutSeconds).To(Equal(int32(3)))
		// The controller answers its own errors as the API server would, within a budget that
		// leaves time to answer.
		d := &appsv1.Deployment{}
		g.Expect(yaml.Unmarshal(docs["Deployment"][0], d)).To(Succeed())
		g.Expect(d.Spec.Template.Spec.Containers[0].Args).To(ContainElements("--admission-failure-policy=Fail", "--admission-decision-budget=1000ms"))
		g.Expect(c.NamespaceSelector.MatchExpressions).To(ContainElement(metav1.LabelSelectorRequirement{
			Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system", "imageguard", "monitoring"},
		}))
	}
}

// TestSchemaCoversEveryValue checks that values.schema.json declares every key of values.yaml
// (it forbids unknown keys, so a typo in a user's values fails), and that it rejects a bad value.
func TestSchemaCoversEveryValue(t *testing.T) {
	g := NewWithT(t)
	var values, schema map[string]any
	raw, err := os.ReadFile(filepath.Join(chart, "values.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(yaml.Unmarshal(raw, &values)).To(Succeed())
	raw, err = os.ReadFile(filepath.Join(chart, "values.schema.json"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(yaml.Unmarshal(raw, &schema)).To(Succeed())
	var walk func(path string, v map[string]any, s map[string]any)
	walk = func(path string, v map[string]any, s map[string]any) {
		props, _ := s["properties"].(map[string]any)
		for key, val := range v {
			sub, ok := props[key].(map[string]any)
			g.Expect(ok).To(BeTrue(), "values.schema.json lacks %s%s", path, key)
			if m, isMap := val.(map[string]any); isMap && sub["properties"] != nil {
				walk(path+key+".", m, sub)
			}
		}
	}
	walk("", values, schema)

	cmd := exec.Command(helm, "template", "ig", chart, "--set", "controller.scanConcurrency=0")
	out, err := cmd.CombinedOutput()
	g.Expect(err).To(HaveOccurred())
	g.Expect(string(out)).To(ContainSubstring("scanConcurrency"))

	// Two replicas would both write one ReadWriteOnce volume.
	out, err = exec.Command(helm, "template", "ig", chart, "--set", "persistence.enabled=true", "--set", "replicas=2").CombinedOutput()
	g.Expect(err).To(HaveOccurred())
	g.Expect(string(out)).To(ContainSubstring("replicas"))
}

// TestDefaultsFitTheirVolumeAndMemory checks the arithmetic docs/operations.md gives: the cache
// holds two DBs (during a swap), the disk of each concurrent analysis (its image and Trivy's
// temporary files), the layer cache and 1 GiB of inventories; the analysis workers and the
// controller fit the memory limit.
func TestDefaultsFitTheirVolumeAndMemory(t *testing.T) {
	g := NewWithT(t)
	var values struct {
		Controller struct {
			ScanConcurrency    int64 `json:"scanConcurrency"`
			LayerCacheMaxBytes int64 `json:"layerCacheMaxBytes"`
			Limits             struct {
				MaxImageBytes, MaxTempBytes, MaxConfigBytes, MaxPackageDBBytes, MaxPackages, DBMaxBytes, AnalysisMemoryBytes int64
				MemoryLimitRatio                                                                                             float64
			} `json:"limits"`
		} `json:"controller"`
		Resources struct {
			Limits struct{ Memory resource.Quantity } `json:"limits"`
		} `json:"resources"`
		Persistence struct {
			Size, EmptyDirSizeLimit resource.Quantity
		} `json:"persistence"`
	}
	raw, err := os.ReadFile(filepath.Join(chart, "values.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(yaml.Unmarshal(raw, &values)).To(Succeed())
	c, l := values.Controller, values.Controller.Limits
	g.Expect(c.ScanConcurrency).To(BeNumerically(">", 0))
	for _, v := range []int64{l.MaxImageBytes, l.MaxTempBytes, l.MaxConfigBytes, l.MaxPackageDBBytes, l.MaxPackages, l.DBMaxBytes, l.AnalysisMemoryBytes} {
		g.Expect(v).To(BeNumerically(">", 0))
	}
	g.Expect(l.MemoryLimitRatio).To(BeNumerically(">", 0))

	cache := 2*l.DBMaxBytes + c.ScanConcurrency*(l.MaxImageBytes+l.MaxTempBytes) + c.LayerCacheMaxBytes + 1<<30
	g.Expect(values.Persistence.EmptyDirSizeLimit.Value()).To(BeNumerically(">=", cache), "emptyDirSizeLimit")
	g.Expect(values.Persistence.Size.Value()).To(BeNumerically(">=", cache), "persistence.size")

	// Each analysis runs in a worker bounded by analysisMemoryBytes; the controller keeps 256 MiB
	// for its caches, admission and the DB's pages.
	memory := c.ScanConcurrency*l.AnalysisMemoryBytes + 256<<20
	g.Expect(memory).To(BeNumerically("<=", values.Resources.Limits.Memory.Value()), "resources.limits.memory")
}

func TestInstallUpgradeUninstall(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	runHelm(t, "install", "ig", chart, "-n", "imageguard", "--create-namespace", "--set", "policyReportCRDs.install=true")

	// The CRDs are established and served; the objects exist.
	for _, name := range []string{"imagescanreports.security.imageguard.dev", "imagepolicies.security.imageguard.dev",
		"clusterimagepolicies.security.imageguard.dev", "policyreports.wgpolicyk8s.io"} {
		g.Eventually(func(g Gomega) {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			g.Expect(env.Client.Get(ctx, client.ObjectKey{Name: name}, crd)).To(Succeed())
			established := false
			for _, c := range crd.Status.Conditions {
				established = established || (c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue)
			}
			g.Expect(established).To(BeTrue(), name)
		}).WithTimeout(time.Minute).Should(Succeed())
	}
	g.Eventually(func() error {
		return env.Client.List(ctx, &securityv1alpha1.ImageScanReportList{})
	}).WithTimeout(time.Minute).Should(Succeed())
	d := &appsv1.Deployment{}
	g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: "imageguard", Name: "ig-imageguard"}, d)).To(Succeed())
	g.Expect(env.Client.Get(ctx, client.ObjectKey{Name: "ig-imageguard-manager"}, &rbacv1.ClusterRole{})).To(Succeed())
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	g.Expect(env.Client.Get(ctx, client.ObjectKey{Name: "ig-imageguard"}, vwc)).To(Succeed())
	g.Expect(*vwc.Webhooks[0].FailurePolicy).To(Equal(admissionregistrationv1.Ignore), "an ImageGuard outage must not block pods by default")

	runHelm(t, "upgrade", "ig", chart, "-n", "imageguard", "--set", "policyReportCRDs.install=true", "--set", "controller.scanConcurrency=4")
	g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(d), d)).To(Succeed())
	g.Expect(d.Spec.Template.Spec.Containers[0].Args).To(ContainElement("--scan-concurrency=4"))

	runHelm(t, "uninstall", "ig", "-n", "imageguard")
	g.Eventually(func() bool {
		return client.IgnoreNotFound(env.Client.Get(ctx, client.ObjectKeyFromObject(d), &appsv1.Deployment{})) == nil &&
			env.Client.Get(ctx, client.ObjectKeyFromObject(d), &appsv1.Deployment{}) != nil
	}).WithTimeout(time.Minute).Should(BeTrue())
	// The CRDs, and so users' reports and policies, stay.
	g.Expect(env.Client.Get(ctx, client.ObjectKey{Name: "imagescanreports.security.imageguard.dev"}, &apiextensionsv1.CustomResourceDefinition{})).To(Succeed())
}
