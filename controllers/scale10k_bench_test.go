package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// BenchmarkClusterScale10000Pods is the scale scenario at 10,000 pods: 100 namespaces of
// 100 pods, each pod an init container, an app container and a sidecar, over 1,000 digests (980
// apps, 15 sidecars, 5 init images) built on 4 shared bases (3 Alpine, 1 Debian; each base an OS
// layer and a 4 MiB runtime layer). Each namespace runs 25 apps, all sidecars and all init images:
// 4,500 reports. Then a DB update that changes the reports of the Alpine-based images. It prints
// the time to cover every pod, analyses, blob GETs and bytes against the distinct layers and
// configs, peak RSS, report writes, and the update's time, registry requests and writes. It runs
// once whatever b.N is; run it with and without the layer cache:
//
//	KUBEBUILDER_ASSETS=$(hack/control-plane.sh) GOEXPERIMENT=jsonv2 \
//	  go test ./controllers -run '^$' -bench ClusterScale10000Pods -benchtime 1x -timeout 60m
//	IMAGEGUARD_TEST_LAYER_CACHE_MAX_BYTES=-1 ... (the same, without the layer cache)
func BenchmarkClusterScale10000Pods(b *testing.B) {
	const (
		namespaces, podsPerNamespace = 100, 100
		apps, sidecars, inits        = 980, 15, 5
		appsPerNamespace             = 25
	)
	ctx := context.Background()
	c := benchClient(b)

	// The bases: what the registry holds once, whatever number of images use them.
	var bases [][]v1.Layer
	for i := range 4 {
		var osImage v1.Image
		var err error
		if i < 3 {
			osImage, err = testutil.AlpineImage("3.22.1", []testutil.APKPackage{
				{Name: "libcrypto3", Version: "3.5.1-r0", Origin: "openssl"},
				{Name: "busybox", Version: "1.37.0-r18"},
				{Name: fmt.Sprintf("runtime%d", i), Version: "1.0.0-r0"},
			})
		} else {
			osImage, err = testutil.DebianImage("12.11", []testutil.DebPackage{
				{Name: "libssl3", Version: "3.0.15-1~deb12u1", Source: "openssl"},
				{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"},
			})
		}
		if err != nil {
			b.Fatal(err)
		}
		layers, err := osImage.Layers()
		if err != nil {
			b.Fatal(err)
		}
		bases = append(bases, append(layers, testutil.PaddingLayer(4<<20, int64(1000+i))))
	}
	distinct := map[v1.Hash]int64{}
	var refs, ids []string
	push := func(repo string, base []v1.Layer, unique string) {
		own, err := testutil.LayerFromFiles(map[string][]byte{
			"app/node_modules/" + unique + "/package.json": fmt.Appendf(nil, `{"name": %q, "version": "1.0.0"}`, unique),
			"app/bundle.js": []byte(strings.Repeat("// "+unique+"\n", 2000)),
		})
		if err != nil {
			b.Fatal(err)
		}
		img, err := testutil.ImageFromLayers(testutil.LinuxAMD64, append(append([]v1.Layer{}, base...), own)...)
		if err != nil {
			b.Fatal(err)
		}
		layers, _ := img.Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			distinct[d], _ = l.Size()
		}
		m, _ := img.Manifest()
		distinct[m.Config.Digest] = m.Config.Size
		ref, id, _ := testsuite.Push(b, reg, repo, img)
		refs, ids = append(refs, ref), append(ids, id)
	}
	for i := range apps {
		push(fmt.Sprintf("scale10k/app-%03d", i), bases[i%4], fmt.Sprintf("app-%03d", i))
	}
	for i := range sidecars {
		push(fmt.Sprintf("scale10k/sidecar-%02d", i), bases[i%4], fmt.Sprintf("sidecar-%02d", i))
	}
	for i := range inits {
		push(fmt.Sprintf("scale10k/init-%d", i), bases[i%4], fmt.Sprintf("init-%d", i))
	}
	var distinctBytes int64
	for _, n := range distinct {
		distinctBytes += n
	}
	sidecarRef := func(i int) int { return apps + i%sidecars }
	initRef := func(i int) int { return apps + sidecars + i%inits }

	analyses := scan.Analyses()
	writesBefore, conflictsBefore := reportWrites(b)
	reg.ResetCounts()
	start := time.Now()
	for n := range namespaces {
		ns := fmt.Sprintf("scale-%03d", n)
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			b.Fatal(err)
		}
		for p := range podsPerNamespace {
			app := (n*10 + p%appsPerNamespace) % apps
			side, init := sidecarRef(n+p), initRef(n*3+p)
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%03d", p), Namespace: ns},
				Spec: corev1.PodSpec{
					InitContainers: []corev1.Container{{Name: "init", Image: refs[init]}},
					Containers:     []corev1.Container{{Name: "app", Image: refs[app]}, {Name: "sidecar", Image: refs[side]}},
				},
			}
			if err := c.Create(ctx, pod); err != nil {
				b.Fatal(err)
			}
			pod.Status.Phase = corev1.PodRunning
			pod.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "init", Image: refs[init], ImageID: ids[init]}}
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{
				{Name: "app", Image: refs[app], ImageID: ids[app]},
				{Name: "sidecar", Image: refs[side], ImageID: ids[side]},
			}
			if err := c.Status().Update(ctx, pod); err != nil {
				b.Fatal(err)
			}
		}
	}
	created := time.Since(start)
	want := namespaces * (appsPerNamespace + sidecars + inits)
	waitReports(b, c, want, 30*time.Minute, func(r *securityv1alpha1.ImageScanReport) bool {
		return meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)
	})
	covered := time.Since(start)
	counts := reg.Counts()
	writes, conflicts := reportWrites(b)
	layerCache := "off"
	if stats, ok := scan.LayerCacheStats(); ok {
		layerCache = fmt.Sprintf("on (%d MiB bound): %d hits, %d misses, %d entries, %.1f MiB", stats.MaxBytes>>20, stats.Hits, stats.Misses, stats.Entries, float64(stats.Bytes)/(1<<20))
	}
	b.ReportMetric(created.Seconds(), "s-to-create-pods")
	b.ReportMetric(covered.Seconds(), "s-to-cover")
	b.ReportMetric(float64(scan.Analyses()-analyses), "analyses")
	b.ReportMetric(float64(counts.BlobGETs), "blob-GETs")
	b.ReportMetric(float64(counts.BlobBytes)/(1<<20), "blob-MiB")
	b.ReportMetric(float64(len(distinct)), "distinct-blobs")
	b.ReportMetric(float64(distinctBytes)/(1<<20), "distinct-blob-MiB")
	b.ReportMetric(writes-writesBefore, "report-writes")
	b.ReportMetric(conflicts-conflictsBefore, "report-write-conflicts")
	b.ReportMetric(peakRSSMiB(), "peak-RSS-MiB")
	fmt.Printf("10,000 pods (%d reports, %d digests), layer cache %s:\n  pods created in %s, all Ready %s after the first create; %d analyses\n"+
		"  blob GETs %d (%.1f MiB) for %d distinct blobs (%.1f MiB); %.0f report writes (%.0f conflicts); peak RSS %.0f MiB\n",
		want, len(refs), layerCache, created.Round(time.Second), covered.Round(time.Second), scan.Analyses()-analyses,
		counts.BlobGETs, float64(counts.BlobBytes)/(1<<20), len(distinct), float64(distinctBytes)/(1<<20),
		writes-writesBefore, conflicts-conflictsBefore, peakRSSMiB())

	// A DB update that gives the images on the Alpine bases one more finding.
	busybox := testutil.AdvisorySpec{ID: "CVE-2026-1005", Ecosystem: "alpine 3.22", Package: "busybox", FixedVersion: "1.37.0-r30", Severity: "LOW"}
	reg.PublishDB(testTB, dbRepo, "2", dbSpec(zlibAdvisory, busybox))
	reg.ResetCounts()
	writesBefore, _ = reportWrites(b)
	start = time.Now()
	if _, err := db.Check(ctx); err != nil {
		b.Fatal(err)
	}
	alpine := 0
	list := &securityv1alpha1.ImageScanReportList{}
	if err := c.List(ctx, list); err != nil {
		b.Fatal(err)
	}
	for i := range list.Items {
		if r := &list.Items[i]; strings.HasPrefix(r.Namespace, "scale-") && r.Status.OS != nil && r.Status.OS.Family == "alpine" {
			alpine++
		}
	}
	waitReports(b, c, alpine, 30*time.Minute, func(r *securityv1alpha1.ImageScanReport) bool {
		return r.Status.Summary != nil && r.Status.Summary.Low >= 1
	})
	rematch := time.Since(start)
	// Reports whose findings did not change are not written: wait a little for stragglers.
	time.Sleep(5 * time.Second)
	writes, _ = reportWrites(b)
	b.ReportMetric(rematch.Seconds(), "s-to-rematch")
	b.ReportMetric(float64(reg.Counts().Requests), "registry-requests-on-rematch")
	b.ReportMetric(writes-writesBefore, "rematch-writes")
	b.ReportMetric(float64(alpine), "reports-changed")
	fmt.Printf("  DB update (download included): %d of %d reports changed, all reflect it after %s; %d registry requests (the DB's own); %.0f report writes\n",
		alpine, want, rematch.Round(100*time.Millisecond), reg.Counts().Requests, writes-writesBefore)
}

// peakRSSMiB is this test process's peak resident memory (VmHWM).
func peakRSSMiB() float64 { return testutil.ProcessMiB("VmHWM") }
