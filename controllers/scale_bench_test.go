package controllers_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// BenchmarkClusterScale measures the scale scenario on the test control plane: 2,000
// pods in 40 namespaces over 200 digests (each digest used in 5 namespaces: 1,000 reports), then
// a DB update that changes every report. It runs once whatever b.N is:
//
//	KUBEBUILDER_ASSETS=$(hack/control-plane.sh) GOEXPERIMENT=jsonv2 \
//	  go test ./controllers -run '^$' -bench 'ClusterScale$' -benchtime 1x
func BenchmarkClusterScale(b *testing.B) {
	const namespaces, podsPerNamespace, digests, digestsPerNamespace = 40, 50, 200, 25
	ctx := context.Background()
	c := benchClient(b)

	refs := make([]string, digests)
	ids := make([]string, digests)
	for i := range digests {
		refs[i], ids[i], _ = testsuite.Push(b, reg, fmt.Sprintf("scale/app-%03d", i), testsuite.Image(fmt.Sprintf("scale-%d", i)))
	}
	analyses := scan.Analyses()
	writesBefore, conflictsBefore := reportWrites(b)
	reg.ResetCounts()
	start := time.Now()
	for n := range namespaces {
		ns := fmt.Sprintf("scale-%02d", n)
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			b.Fatal(err)
		}
		for p := range podsPerNamespace {
			d := (n*5 + p%digestsPerNamespace) % digests
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%02d", p), Namespace: ns},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: refs[d]}}},
			}
			if err := c.Create(ctx, pod); err != nil {
				b.Fatal(err)
			}
			pod.Status.Phase = corev1.PodRunning
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: refs[d], ImageID: ids[d]}}
			if err := c.Status().Update(ctx, pod); err != nil {
				b.Fatal(err)
			}
		}
	}
	created := time.Since(start)
	want := namespaces * digestsPerNamespace
	waitReports(b, c, want, 10*time.Minute, func(r *securityv1alpha1.ImageScanReport) bool {
		return meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)
	})
	covered := time.Since(start)
	var mem runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&mem)
	b.ReportMetric(created.Seconds(), "s-to-create-pods")
	b.ReportMetric(covered.Seconds(), "s-to-cover")
	b.ReportMetric(float64(scan.Analyses()-analyses), "analyses")
	writes, conflicts := reportWrites(b)
	b.ReportMetric(writes-writesBefore, "report-writes")
	b.ReportMetric(conflicts-conflictsBefore, "report-write-conflicts")
	b.ReportMetric(float64(mem.HeapInuse)/(1<<20), "heap-MiB")
	b.ReportMetric(rssMiB(), "process-RSS-MiB")

	// A DB update that gives every image one more finding.
	busybox := testutil.AdvisorySpec{ID: "CVE-2026-1005", Ecosystem: "alpine 3.22", Package: "busybox", FixedVersion: "1.37.0-r30", Severity: "LOW"}
	reg.PublishDB(testTB, dbRepo, "2", dbSpec(zlibAdvisory, busybox))
	if _, err := db.Check(ctx); err != nil {
		b.Fatal(err)
	}
	reg.ResetCounts()
	writesBefore, _ = reportWrites(b)
	start = time.Now()
	waitReports(b, c, want, 10*time.Minute, func(r *securityv1alpha1.ImageScanReport) bool {
		return r.Status.Summary != nil && r.Status.Summary.Low >= 1
	})
	b.ReportMetric(time.Since(start).Seconds(), "s-to-rematch")
	b.ReportMetric(float64(reg.Counts().Requests), "registry-requests-on-rematch")
	writes, _ = reportWrites(b)
	b.ReportMetric(writes-writesBefore, "rematch-writes")
}

// benchClient is a client for setting up thousands of objects quickly: its rate limit is far
// above the controller's, so that the benchmark measures the controller.
func benchClient(tb testing.TB) client.Client {
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = 500, 1000
	c, err := client.New(cfg, client.Options{Scheme: env.Client.Scheme()})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// waitReports polls until want reports of the scale namespaces satisfy ok, for at most limit.
func waitReports(b *testing.B, c client.Client, want int, limit time.Duration, ok func(*securityv1alpha1.ImageScanReport) bool) {
	b.Helper()
	deadline := time.Now().Add(limit)
	for {
		list := &securityv1alpha1.ImageScanReportList{}
		if err := c.List(context.Background(), list); err != nil {
			b.Fatal(err)
		}
		n := 0
		for i := range list.Items {
			if strings.HasPrefix(list.Items[i].Namespace, "scale-") && ok(&list.Items[i]) {
				n++
			}
		}
		if n >= want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d reports after %s", n, want, limit)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// reportWrites reads the API server's count of write requests on imagescanreports, and how many
// of them were refused as conflicts (409).
func reportWrites(b *testing.B) (float64, float64) {
	total, conflicts, err := testsuite.APIWrites(env.Config, "imagescanreports")
	if err != nil {
		b.Fatal(err)
	}
	return total, conflicts
}

// rssMiB is this test process's resident memory: the controller, but also the API client, the
// registry and the fixtures of the benchmark.
func rssMiB() float64 { return testutil.ProcessMiB("VmRSS") }

// BenchmarkRegistryScan1500Tags measures a RegistryScan of every tag of three repositories: 1,500
// tags (5 per image, paginated 100 a page) over 300 digests, each analysed once. It prints the
// listing time (the listing, the tag lookups and the 300 reports made), the time until every
// digest is scanned, and the analyses made. It runs once whatever b.N is:
//
//	KUBEBUILDER_ASSETS=$(hack/control-plane.sh) GOEXPERIMENT=jsonv2 \
//	  go test ./controllers -run '^$' -bench RegistryScan1500Tags -benchtime 1x
func BenchmarkRegistryScan1500Tags(b *testing.B) {
	ctx := context.Background()
	c := benchClient(b)
	for _, repo := range []string{"bench/api", "bench/web", "bench/worker"} {
		for i := range 100 {
			img := testsuite.Image(fmt.Sprintf("%s-%d", repo, i))
			for _, tag := range []string{fmt.Sprintf("%d.%d.0", 1+i/25, i%25), fmt.Sprintf("v%d.%d.0", 1+i/25, i%25), fmt.Sprintf("rc-%d", i), fmt.Sprintf("sha-%07x", i*7919), fmt.Sprintf("build-%03d", i)} {
				reg.Push(b, repo, tag, img)
			}
		}
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench-rscan"}}); err != nil {
		b.Fatal(err)
	}
	analyses := scan.Analyses()
	reg.ResetCounts()
	start := time.Now()
	s := &securityv1alpha1.RegistryScan{
		ObjectMeta: metav1.ObjectMeta{Name: "all", Namespace: "bench-rscan"},
		Spec:       securityv1alpha1.RegistryScanSpec{Repositories: []string{reg.Host() + "/bench/**"}},
	}
	if err := c.Create(ctx, s); err != nil {
		b.Fatal(err)
	}
	var listed time.Duration
	for deadline := time.Now().Add(20 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("not scanned in time: %+v", s.Status)
		}
		if err := c.Get(ctx, client.ObjectKeyFromObject(s), s); err != nil {
			b.Fatal(err)
		}
		if listed == 0 && s.Status.LastListTime != nil {
			listed = time.Since(start)
		}
		if s.Status.Scanned+s.Status.Failed >= 300 && meta.IsStatusConditionTrue(s.Status.Conditions, securityv1alpha1.ConditionReady) {
			break
		}
	}
	total := time.Since(start)
	b.ReportMetric(listed.Seconds(), "s-listed")
	b.ReportMetric(total.Seconds(), "s-scanned")
	b.ReportMetric(float64(scan.Analyses()-analyses), "analyses")
	b.ReportMetric(float64(s.Status.Digests), "digests")
	b.ReportMetric(float64(reg.Counts().Requests), "registry-requests")
	fmt.Printf("RegistryScan of 1,500 tags (3 repositories, 300 digests): listed and 300 reports made in %s, all scanned in %s, %d analyses, %d registry requests\n",
		listed.Round(time.Millisecond), total.Round(time.Millisecond), scan.Analyses()-analyses, reg.Counts().Requests)
	_ = c.Delete(ctx, s)
}
