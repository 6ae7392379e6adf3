package admission_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/testenv"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/webhookcert"
	"github.com/imageguard/imageguard/internal/workload"
)

// imagePolicyBackend writes what the API server needs to call ImageGuard's /imagepolicy at
// 127.0.0.1:port: the serving certificate files, the backend kubeconfig with the client
// certificate the API server presents (signed by clientCA) and the AdmissionConfiguration, as
// docs/admission.md describes them. It returns the configuration's path.
func imagePolicyBackend(t *testing.T, dir string, port int, client testutil.ClientCerts) string {
	t.Helper()
	data, err := webhookcert.NewSecretData([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(dir, "certs")
	must(t, os.MkdirAll(certDir, 0o700))
	for _, name := range []string{webhookcert.KeyCert, webhookcert.KeyKey, webhookcert.KeyCABundle} {
		must(t, os.WriteFile(filepath.Join(certDir, name), data[name], 0o600))
	}
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: imageguard
  cluster:
    server: https://127.0.0.1:%d%s
    certificate-authority: %s
users:
- name: kube-apiserver
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: imageguard
  context: {cluster: imageguard, user: kube-apiserver}
current-context: imageguard
`, port, admission.ImagePolicyPath, filepath.Join(certDir, webhookcert.KeyCABundle), client.CertFile, client.KeyFile)
	must(t, os.WriteFile(filepath.Join(dir, "imagepolicy.kubeconfig"), []byte(kubeconfig), 0o600))
	// TTLs of -1 turn the API server's decision cache off, so every pod asks ImageGuard.
	config := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: ImagePolicyWebhook
  configuration:
    imagePolicy:
      kubeConfigFile: %s
      allowTTL: -1
      denyTTL: -1
      retryBackoff: 100
      defaultAllow: false
`, filepath.Join(dir, "imagepolicy.kubeconfig"))
	path := filepath.Join(dir, "admission-config.yaml")
	must(t, os.WriteFile(path, []byte(config), 0o600))
	return path
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestImagePolicyWebhookPlugin runs Kubernetes' own ImagePolicyWebhook admission plugin against
// ImageGuard's /imagepolicy endpoint, served as the controller serves it with --webhook-client-ca:
// the API server's client certificate is required.
func TestImagePolicyWebhookPlugin(t *testing.T) {
	g := NewWithT(t)
	stack := startImagePolicyStack(t, nil)
	env, dir, port := stack.env, stack.dir, stack.port
	ctx := context.Background()

	c := env.Client
	g.Expect(c.Create(ctx, &securityv1alpha1.ClusterImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "trusted-registries"},
		Spec: securityv1alpha1.ClusterImagePolicySpec{
			Enforcement: securityv1alpha1.EnforcementEnforce,
			Rules:       securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}}},
		},
	})).To(Succeed())
	pod := func(name, image string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}}
	}
	// The manager's cache sees the policy a moment after it is created.
	g.Eventually(func() error {
		return c.Create(ctx, pod("untrusted", "evil.example.com/app:1"))
	}).WithTimeout(30 * time.Second).Should(MatchError(ContainSubstring("evil.example.com/app:1: registries")))
	g.Expect(c.Create(ctx, pod("trusted", "registry.example.com/team/app:1"))).To(Succeed())
	// No label turns this check off (only the operator's --admission-exempt-namespaces do).
	ns := &corev1.Namespace{}
	g.Expect(c.Get(ctx, client.ObjectKey{Name: "default"}, ns)).To(Succeed())
	ns.Labels = map[string]string{admission.OptOutLabel: "disabled"}
	g.Expect(c.Update(ctx, ns)).To(Succeed())
	g.Consistently(func() error {
		return c.Create(ctx, pod("opted-out-"+strconv.FormatInt(time.Now().UnixNano(), 36), "evil.example.com/app:1"))
	}).WithTimeout(3 * time.Second).Should(MatchError(ContainSubstring("evil.example.com/app:1: registries")))
	// A caller without the API server's client certificate is refused at the handshake.
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(dir, "certs", webhookcert.KeyCABundle))
	g.Expect(err).NotTo(HaveOccurred())
	pool.AppendCertsFromPEM(ca)
	anonymous := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	_, err = anonymous.Post(fmt.Sprintf("https://127.0.0.1:%d%s", port, admission.ImagePolicyPath), "application/json", strings.NewReader(`{"apiVersion":"imagepolicy.k8s.io/v1alpha1","kind":"ImageReview","spec":{"namespace":"default","containers":[{"image":"evil.example.com/app:1"}]}}`))
	g.Expect(err).To(MatchError(ContainSubstring("certificate required")))

	// ImageGuard down: defaultAllow (false here) decides.
	stack.stop()
	g.Expect(<-stack.done).To(Succeed())
	g.Eventually(func() error {
		return c.Create(ctx, pod("while-down-"+strconv.FormatInt(time.Now().UnixNano(), 36), "registry.example.com/team/app:2"))
	}).WithTimeout(30 * time.Second).Should(MatchError(And(
		ContainSubstring("is forbidden"), ContainSubstring("connection refused"))))
}

// imagePolicyStack is a kube-apiserver whose ImagePolicyWebhook plugin calls a manager serving
// /imagepolicy as the controller does with --webhook-client-ca: the API server's client
// certificate is required.
type imagePolicyStack struct {
	env  *testenv.Env
	dir  string
	port int
	// stop stops the manager; done receives what its Start returned.
	stop context.CancelFunc
	done chan error
}

// startImagePolicyStack starts the stack; queue (nil queues nothing) is told of unscanned images.
// Both are stopped when the test ends.
func startImagePolicyStack(t *testing.T, queue admission.ScanQueue) *imagePolicyStack {
	t.Helper()
	g := NewWithT(t)
	dir := t.TempDir()
	port := freePort(t)
	clientCerts, err := testutil.NewClientCerts(dir, "kube-apiserver")
	g.Expect(err).NotTo(HaveOccurred())
	env, err := testenv.Start(testenv.Options{APIServerArgs: map[string]string{
		"enable-admission-plugins":      "ImagePolicyWebhook",
		"admission-control-config-file": imagePolicyBackend(t, dir, port, clientCerts),
	}})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })
	requireClientCert, err := webhookcert.RequireClientCert(clientCerts.CAFile)
	g.Expect(err).NotTo(HaveOccurred())
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:  scheme.New(),
		Metrics: metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: port, CertDir: filepath.Join(dir, "certs"),
			TLSOpts: []func(*tls.Config){requireClientCert}}),
	})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(workload.IndexReports(context.Background(), mgr.GetFieldIndexer())).To(Succeed())
	reviewer := &admission.Reviewer{Clock: clock.RealClock{}, Queue: queue, State: &admission.CacheState{
		Gatherer: workload.NewGatherer(mgr.GetCache(), ""), Reader: mgr.GetCache(), Clock: clock.RealClock{},
	}}
	mgr.GetWebhookServer().Register(admission.ImagePolicyPath, &admission.ImageReviewHandler{Reviewer: reviewer})
	ctx, stop := context.WithCancel(context.Background())
	stack := &imagePolicyStack{env: env, dir: dir, port: port, stop: stop, done: make(chan error, 1)}
	go func() { stack.done <- mgr.Start(ctx) }()
	t.Cleanup(stop)
	return stack
}
