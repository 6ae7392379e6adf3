package admission_test

import (
	"context"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/imageguard/imageguard/internal/policy"
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
	q := &recordingQueue{}
	stack := startImagePolicyStack(t, q)
	const ref = "attacker.example.com/anything@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "never-made", Namespace: "default"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: ref}}}}
	g.Eventually(func() error { return stack.env.Client.Create(context.Background(), pod.DeepCopy(), client.DryRunAll) }).
		WithTimeout(30 * time.Second).Should(Succeed())
	q.mu.Lock()
	defer q.mu.Unlock()
	g.Expect(q.images).To(BeEmpty(), "a dry run queued the scan of %v", q.images)
}
