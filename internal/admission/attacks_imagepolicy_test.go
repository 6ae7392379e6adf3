package admission_test

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"sync"
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

	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/testenv"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/webhookcert"
	"github.com/imageguard/imageguard/internal/workload"
)

type recordingQueue struct {
	mu     sync.Mutex
	images []string
}

func (q *recordingQueue) QueueScans(_ string, images []policy.Image) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, img := range images {
		q.images = append(q.images, img.Reference())
	}
}

// The ImagePolicyWebhook plugin calls /imagepolicy for dry runs too, and an ImageReview says
// nothing of dry runs: ImageGuard queues (creates reports for, and pulls) the images of a pod
// that is never created.
func TestAttackImageReviewsQueueNoScans(t *testing.T) {
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
	defer func() { _ = env.Stop() }()
	requireClientCert, err := webhookcert.RequireClientCert(clientCerts.CAFile)
	g.Expect(err).NotTo(HaveOccurred())
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme: scheme.New(), Metrics: metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: port, CertDir: filepath.Join(dir, "certs"),
			TLSOpts: []func(*tls.Config){requireClientCert}}),
	})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(workload.IndexReports(context.Background(), mgr.GetFieldIndexer())).To(Succeed())
	q := &recordingQueue{}
	reviewer := &admission.Reviewer{Clock: clock.RealClock{}, Queue: q, State: &admission.CacheState{
		Gatherer: workload.NewGatherer(mgr.GetCache(), nil), Reader: mgr.GetCache(), Clock: clock.RealClock{},
	}}
	mgr.GetWebhookServer().Register(admission.ImagePolicyPath, &admission.ImageReviewHandler{Reviewer: reviewer})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _ = mgr.Start(ctx) }()
	const ref = "attacker.example.com/anything@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "never-made", Namespace: "default"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}}}
	g.Eventually(func() error { return env.Client.Create(context.Background(), pod.DeepCopy(), client.DryRunAll) }).
		WithTimeout(30 * time.Second).Should(Succeed())
	q.mu.Lock()
	defer q.mu.Unlock()
	g.Expect(q.images).To(BeEmpty(), "a dry run queued the scan of %v", q.images)
}
