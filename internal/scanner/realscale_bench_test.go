package scanner_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/vulndb"
)

// realScaleDebian is a Debian 12 image of n packages of the real-scale DB's "debian 12" bucket.
// Spread over the bucket (dense false), its packages have a few to a few hundred advisories each,
// as a real base image's do; dense, it takes the bucket's most advised packages first, so that
// each has hundreds.
func realScaleDebian(n int, dense bool) v1.Image {
	var pkgs []testutil.DebPackage
	for i := range n {
		pkgs = append(pkgs, testutil.DebPackage{Name: testutil.RealScalePackageName(realScalePick(i, n, dense)), Version: testutil.RealScaleOSVersion})
	}
	return must(testutil.DebianImage("12.11", pkgs))
}

// realScaleNode is a Node image of n npm packages of the real-scale DB, on no OS, picked as
// realScaleDebian picks.
func realScaleNode(n int, dense bool) v1.Image {
	var pkgs []testutil.NPMPackage
	for i := range n {
		pkgs = append(pkgs, testutil.NPMPackage{Name: testutil.RealScalePackageName(realScalePick(i, n, dense)), Version: testutil.RealScaleLanguageVersion})
	}
	return must(testutil.NPMImage(nil, pkgs))
}

func realScalePick(i, n int, dense bool) int {
	if dense {
		return i * i / 4
	}
	return i * (testutil.RealScale.OSPackages / n)
}

// realScaleFixture loads the real-scale DB (built once, kept between runs) from a link to it, so
// that the kept one is never changed.
func realScaleFixture(tb testing.TB) *fixture {
	tb.Helper()
	started := time.Now()
	src := testutil.RealScaleDB(tb)
	tb.Logf("real-scale DB ready in %s (built once, then kept)", time.Since(started).Round(time.Millisecond))
	dbDir := filepath.Join(tb.TempDir(), "db")
	must(0, os.MkdirAll(dbDir, 0o755))
	for _, name := range []string{"trivy.db", "metadata.json"} {
		must(0, os.Link(filepath.Join(src, "db", name), filepath.Join(dbDir, name)))
	}
	return newFixtureOfDB(tb, dbDir)
}

// BenchmarkRematchRealScaleDB measures re-matches of kept inventories against the real-scale DB
// (300,000 vulnerabilities): a Debian image of 90 packages and a Node image of 50, one goroutine
// (one core) each. It prints matches per second per core, the advisories looked at, and the
// process's resident memory with the DB mapped.
//
//	GOEXPERIMENT=jsonv2 go test ./internal/scanner -run '^$' -bench RealScale -benchtime 5s
func BenchmarkRematchRealScaleDB(b *testing.B) {
	f := realScaleFixture(b)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		img  v1.Image
	}{
		{"debian-90", realScaleDebian(90, false)}, {"node-50", realScaleNode(50, false)},
		{"debian-90-dense", realScaleDebian(90, true)}, {"node-50-dense", realScaleNode(50, true)},
	} {
		inv, _, err := f.scanner.Inventory(ctx, f.push(b, "realscale/"+tc.name, tc.img))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			var findings int
			for b.Loop() {
				res, err := f.scanner.Match(ctx, inv)
				if err != nil {
					b.Fatal(err)
				}
				findings = len(res.Findings)
			}
			perSecond := float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(perSecond, "matches/s/core")
			b.ReportMetric(float64(inv.PackageCount()), "packages")
			b.ReportMetric(float64(findings), "findings")
			b.ReportMetric(rssMiB(), "RSS-MiB")
			fmt.Printf("re-match on the real-scale DB, %s: %d packages, %d findings, %.0f matches/s on one core, RSS %.0f MiB\n",
				tc.name, inv.PackageCount(), findings, perSecond, rssMiB())
		})
	}
}

// BenchmarkRealScaleDBSwap publishes the real-scale DB as Trivy's OCI artifact and measures what
// the DB manager does with it: download, verify (digest, schema, a test open), and swap in; then
// the re-match of 1,000 kept inventories after the swap.
func BenchmarkRealScaleDBSwap(b *testing.B) {
	src := testutil.RealScaleDB(b)
	archive := must(testutil.DBArchive(src))
	reg := testutil.NewRegistry(b)
	reg.Push(b, "aquasecurity/trivy-db", "2", must(testutil.DBArtifact(archive)))
	info, _ := os.Stat(filepath.Join(src, "db", "trivy.db"))
	cache := b.TempDir()
	client := registry.NewClient(registry.Options{InsecureHosts: []string{reg.Host()}})
	m := must(vulndb.New(vulndb.Options{CacheDir: cache, Repositories: []string{reg.Host() + "/aquasecurity/trivy-db:2"},
		Registry: client, Log: logr.Discard(), CheckTimeout: 10 * time.Minute}))
	ctx := context.Background()
	started := time.Now()
	if _, err := m.Check(ctx); err != nil {
		b.Fatal(err)
	}
	swap := time.Since(started)
	b.ReportMetric(swap.Seconds(), "s-download-verify-swap")
	b.ReportMetric(float64(len(archive))/(1<<20), "compressed-MiB")
	b.ReportMetric(float64(info.Size())/(1<<20), "unpacked-MiB")

	f := &fixture{reg: reg, db: m, client: client, cache: b.TempDir()}
	f.scanner = f.newScanner(b, scanner.Options{})
	var invs []*scanner.Inventory
	for i, img := range []v1.Image{realScaleDebian(90, false), realScaleNode(50, false)} {
		inv, _, err := f.scanner.Inventory(ctx, f.push(b, fmt.Sprintf("realscale/img-%d", i), img))
		if err != nil {
			b.Fatal(err)
		}
		invs = append(invs, inv)
	}
	started = time.Now()
	for i := range 1000 {
		if _, err := f.scanner.Match(ctx, invs[i%2]); err != nil {
			b.Fatal(err)
		}
	}
	rematch := time.Since(started)
	b.ReportMetric(rematch.Seconds(), "s-rematch-1000")
	// The test's own gigabyte (the DB read whole to build its archive, the registry's copy) is
	// garbage by now; it is handed back so that the figure is the process at rest, the DB mapped.
	debug.FreeOSMemory()
	b.ReportMetric(rssMiB(), "RSS-MiB")
	b.ReportMetric(testutil.ProcessMiB("RssAnon"), "RSS-anon-MiB")
	// RssFile: pages of files mapped (the DB) and touched, which the kernel can drop at will.
	fmt.Printf("real-scale DB: %.0f MiB compressed, %.0f MiB unpacked; downloaded, verified and swapped in %s; 1,000 re-matches after it (half Debian, half Node) in %s; RSS %.0f MiB (%.0f MiB anonymous, %.0f MiB of mapped files)\n",
		float64(len(archive))/(1<<20), float64(info.Size())/(1<<20), swap.Round(time.Millisecond), rematch.Round(time.Millisecond), rssMiB(),
		testutil.ProcessMiB("RssAnon"), testutil.ProcessMiB("RssFile"))
	for b.Loop() {
	}
}

// TestRealScaleDBMatchEqualsTrivy builds (or reuses) the real-scale DB and matches a Debian image
// of 90 packages and a Node image of 50 against it: the findings, every field, equal those of
// Trivy's own ScanTarget, on the first match and on the next ones (which read the memo).
func TestRealScaleDBMatchEqualsTrivy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 300,000-vulnerability DB the first time")
	}
	f := realScaleFixture(t)
	info, err := os.Stat(filepath.Join(testutil.RealScaleDB(t), "db", "trivy.db"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() < 200<<20 {
		t.Fatalf("the real-scale DB is %d bytes; the real one is hundreds of MB", info.Size())
	}
	ctx := testContext(t)
	for name, img := range map[string]v1.Image{
		"debian": realScaleDebian(90, false), "node": realScaleNode(50, false),
		"debian-dense": realScaleDebian(90, true), "node-dense": realScaleNode(50, true),
	} {
		inv, _, err := f.scanner.Inventory(ctx, f.push(t, "realscale/"+name, img))
		if err != nil {
			t.Fatal(err)
		}
		want := trivyScanTarget(ctx, t, f, inv)
		if len(want) < 20 {
			t.Fatalf("%s: %d findings; the generator gives its packages many advisories", name, len(want))
		}
		for i := range 3 {
			res, err := f.scanner.Match(ctx, inv)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Findings, want) {
				t.Fatalf("%s, match %d: %d findings differ from Trivy's %d", name, i, len(res.Findings), len(want))
			}
		}
		t.Logf("%s: %d findings, equal to Trivy's", name, len(want))
	}
}

// rssMiB is this process's resident memory.
func rssMiB() float64 { return testutil.ProcessMiB("VmRSS") }
