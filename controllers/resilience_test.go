package controllers_test

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/testsuite"
)

// silentRegistry accepts connections and never answers, the registry that hung the pod
// controller for ever.
func silentRegistry(t testing.TB) string {
	t.Helper()
	l := must(net.Listen("tcp", "127.0.0.1:0"))
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

// TestAHungRegistryHoldsNoOtherReport: pods whose tag lives on a registry that never answers,
// one in a namespace of ten other pods and one in a namespace of its own, beside ten more pods
// elsewhere. The 20 other pods' reports are Ready within 30 s: the lookups end with the registry
// timeout, run in parallel and after the reports of known digests are created, and namespaces
// are reconciled in parallel.
func TestAHungRegistryHoldsNoOtherReport(t *testing.T) {
	g := NewWithT(t)
	hung := silentRegistry(t)
	for _, ns := range []string{"hung-shared", "hung-alone", "hung-others"} {
		namespace(g, ns)
	}
	createPod(g, "hung-alone", "stuck", hung+"/team/app:1", "")
	createPod(g, "hung-shared", "stuck", hung+"/team/app:2", "")
	type want struct{ ns, repo, digest string }
	var wants []want
	for i := range 20 {
		ns := "hung-shared"
		if i%2 == 1 {
			ns = "hung-others"
		}
		repo := fmt.Sprintf("hung/app-%d", i)
		ref, imageID, digest := testsuite.Push(t, reg, repo, testsuite.Image(fmt.Sprint(t.Name(), i)))
		createPod(g, ns, fmt.Sprint("app-", i), ref, imageID)
		wants = append(wants, want{ns, repo, digest})
	}
	start := time.Now()
	g.Eventually(func(g Gomega) {
		for _, w := range wants {
			r := report(g, w.ns, w.repo, w.digest)
			g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue(), "%s/%s: %v", w.ns, r.Name, r.Status.Conditions)
		}
	}).WithTimeout(30 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
	t.Logf("the 20 reports were Ready %s after the last pod was created", time.Since(start).Round(100*time.Millisecond))
}
