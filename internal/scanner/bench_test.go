package scanner_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
)

// benchImage is a ~20 MB image: an Alpine root with many packages, node_modules and 20 MB of
// incompressible data, so the pull and the layer walk dominate as they do for real images.
func benchImage(tb testing.TB, packages int) v1.Image {
	var apk []testutil.APKPackage
	for i := range packages {
		apk = append(apk, testutil.APKPackage{Name: fmt.Sprintf("pkg%03d", i), Version: "1.0.0-r0"})
	}
	apk = append(apk, testutil.APKPackage{Name: "libcrypto3", Version: "3.5.1-r0", Origin: "openssl"})
	base := must(testutil.AlpineImage("3.22.1", apk))
	layers := must(base.Layers())
	var npm []testutil.NPMPackage
	for i := range 50 {
		npm = append(npm, testutil.NPMPackage{Name: fmt.Sprintf("dep%02d", i), Version: "1.0.0"})
	}
	npm = append(npm, testutil.NPMPackage{Name: "lodash", Version: "4.17.20"})
	withNPM := must(testutil.NPMImage(layers, npm))
	layers = must(withNPM.Layers())
	layers = append(layers, testutil.PaddingLayer(20<<20, 42))
	return must(testutil.ImageFromLayers(testutil.LinuxAMD64, layers...))
}

// BenchmarkAnalyze measures a first scan: pull, layer checks, Trivy's analyzers, the kept
// inventory. Each iteration uses a fresh cache so nothing is reused.
func BenchmarkAnalyze(b *testing.B) {
	f := newFixture(b)
	ref := f.push(b, "bench/analyze", benchImage(b, 250))
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		s := f.newScanner(b, scanner.Options{CacheDir: b.TempDir()})
		b.StartTimer()
		if _, _, err := s.Inventory(ctx, ref); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "images/s")
}

// benchDB is a DB where, as in the real one, many of an image's packages have advisories: 100 of
// the image's 250 packages have one (40 still vulnerable), among advisories for 5,000 other
// packages.
func benchDB() *testutil.DBSpec {
	spec := must(testutil.ParseAdvisories([]byte(advisories)))
	add := func(id, pkg, fixed string) {
		spec.Advisories = append(spec.Advisories, testutil.AdvisorySpec{
			ID: id, Ecosystem: "alpine 3.22", Package: pkg, FixedVersion: fixed, Severity: "MEDIUM",
		})
	}
	for i := range 100 {
		fixed := "0.9.0-r0" // already fixed in the installed 1.0.0-r0
		if i%5 < 2 {
			fixed = "1.0.1-r0"
		}
		add(fmt.Sprintf("CVE-2026-%05d", 10000+i), fmt.Sprintf("pkg%03d", i*2), fixed)
	}
	for i := range 5000 {
		add(fmt.Sprintf("CVE-2025-%05d", 10000+i), fmt.Sprintf("other%04d", i), "1.0.0-r0")
	}
	return spec
}

// BenchmarkMatch measures a re-match of a kept inventory of ~300 packages against the DB: what a
// DB update costs per image. Nothing is kept from one match to the next but the per-DB index of
// package names with advisories (built on the first match), so every iteration is a cold match.
func BenchmarkMatch(b *testing.B) {
	f := newFixtureWithDB(b, benchDB())
	ref := f.push(b, "bench/match", benchImage(b, 250))
	ctx := context.Background()
	inv, _, err := f.scanner.Inventory(ctx, ref)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(inv.PackageCount()), "packages")
	var findings int
	b.ResetTimer()
	for b.Loop() {
		res, err := f.scanner.Match(ctx, inv)
		if err != nil {
			b.Fatal(err)
		}
		findings = len(res.Findings)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "images/s")
	if findings != 42 {
		b.Fatalf("want 42 findings (40 pkgNNN, openssl, lodash), got %d", findings)
	}
}

// BenchmarkAnalyzeLayers measures the two parts of an analysis's cost the scaling model uses: an
// image of a 4 MiB base layer and a small app layer analysed with nothing cached ("uncached": the
// per-image cost plus two layers' pull and walk), and with both layers in the layer cache
// ("cached": the per-image cost alone: manifest, config, merge, kept inventory).
func BenchmarkAnalyzeLayers(b *testing.B) {
	f := newFixture(b)
	base := testutil.PaddingLayer(4<<20, 9)
	img := must(testutil.NPMImage([]v1.Layer{base}, []testutil.NPMPackage{{Name: "lodash", Version: "4.17.20"}}))
	ref := f.push(b, "bench/layers", img)
	ctx := context.Background()
	warm := b.TempDir()
	if _, _, err := f.newScanner(b, scanner.Options{CacheDir: warm, LayerCacheMaxBytes: 64 << 20}).Inventory(ctx, ref); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		cached bool
	}{{"uncached", false}, {"cached", true}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				dir := b.TempDir()
				opts := scanner.Options{CacheDir: dir}
				if tc.cached {
					// The warm layer cache, without the kept inventory.
					if err := os.CopyFS(filepath.Join(dir, "layers"), os.DirFS(filepath.Join(warm, "layers"))); err != nil {
						b.Fatal(err)
					}
					opts.LayerCacheMaxBytes = 64 << 20
				}
				s := f.newScanner(b, opts)
				b.StartTimer()
				if _, _, err := s.Inventory(ctx, ref); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/analysis")
		})
	}
}
