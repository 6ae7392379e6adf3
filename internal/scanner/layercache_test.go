package scanner_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
)

// sharedBaseImages builds n images, half on a Debian base and half on an Alpine base (the base
// layers the same blobs), each with a layer of its own: npm packages, one of them vulnerable in
// every other image. It returns the images and the number of distinct layers.
func sharedBaseImages(t testing.TB, n int) ([]v1.Image, int) {
	t.Helper()
	bases := [][]v1.Layer{must(debianImage(t).Layers()), must(alpineImage(t).Layers())}
	imgs := make([]v1.Image, n)
	for i := range n {
		lodash := "4.17.21"
		if i%2 == 0 {
			lodash = "4.17.20"
		}
		imgs[i] = must(testutil.NPMImage(bases[i%2], []testutil.NPMPackage{
			{Name: "lodash", Version: lodash},
			{Name: fmt.Sprintf("app-%02d", i), Version: "1.0.0"},
		}))
	}
	return imgs, len(bases[0]) + len(bases[1]) + n
}

// TestTheLayerCachePullsEachSharedLayerOnce analyses 20 images on two shared bases with the layer
// cache: the registry serves each distinct layer once, plus each image's config, and every
// inventory and finding equals those of analyses without it. A second scanner on the same
// folder (a restart) pulls no layer of an image whose layers it has.
func TestTheLayerCachePullsEachSharedLayerOnce(t *testing.T) {
	g := NewWithT(t)
	ctx := testContext(t)
	f := newFixture(t)
	imgs, distinct := sharedBaseImages(t, 20)
	refs := make([]scanner.ImageRef, len(imgs))
	for i, img := range imgs {
		refs[i] = f.push(t, fmt.Sprintf("shared/app-%02d", i), img)
	}

	plain := f.newScanner(t, scanner.Options{CacheDir: t.TempDir()})
	want := make([]*scanner.Result, len(refs))
	wantInv := make([]*scanner.Inventory, len(refs))
	f.reg.ResetCounts()
	for i, ref := range refs {
		inv, res, err := plain.Scan(ctx, ref)
		g.Expect(err).NotTo(HaveOccurred())
		want[i], wantInv[i] = res, inv
	}
	g.Expect(f.reg.Counts().BlobGETs).To(Equal(2*len(refs)+len(refs)), "without the cache: every base layer once per image")

	cacheDir := t.TempDir()
	cached := f.newScanner(t, scanner.Options{CacheDir: cacheDir, LayerCacheMaxBytes: 64 << 20})
	f.reg.ResetCounts()
	for i, ref := range refs {
		inv, res, err := cached.Scan(ctx, ref)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(inv.OS).To(Equal(wantInv[i].OS))
		g.Expect(inv.Packages).To(Equal(wantInv[i].Packages))
		g.Expect(sortedApps(inv.Applications)).To(Equal(sortedApps(wantInv[i].Applications)))
		g.Expect(res.Findings).To(Equal(want[i].Findings), "image %d", i)
		g.Expect(res.Findings).NotTo(BeEmpty())
	}
	g.Expect(f.reg.Counts().BlobGETs).To(Equal(distinct+len(refs)), "each distinct layer once, plus the configs")
	stats, ok := cached.LayerCacheStats()
	g.Expect(ok).To(BeTrue())
	g.Expect(stats.Misses).To(BeEquivalentTo(distinct))
	g.Expect(stats.Hits).To(BeEquivalentTo(len(refs) - 2))
	g.Expect(stats.Entries).To(BeEquivalentTo(distinct))

	// A restart: a new image on a base seen before pulls its config and its own layer only.
	restarted := f.newScanner(t, scanner.Options{CacheDir: cacheDir, LayerCacheMaxBytes: 64 << 20})
	stats, _ = restarted.LayerCacheStats()
	g.Expect(stats.Entries).To(BeEquivalentTo(distinct))
	img := must(testutil.NPMImage(must(debianImage(t).Layers()), []testutil.NPMPackage{{Name: "minimist", Version: "1.2.5"}}))
	ref := f.push(t, "shared/after-restart", img)
	f.reg.ResetCounts()
	_, res, err := restarted.Scan(ctx, ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ids(res)).To(ContainElements("GHSA-xvch-5gv4-984h", "CVE-2026-2001"))
	g.Expect(f.reg.Counts().BlobGETs).To(Equal(2), "the config and the new layer")
}

// TestTwoAnalysesSharingALayerAtOncePullItOnce starts the analyses of two images on the same base
// at once (in worker processes, as the controller runs them): the base layer is pulled once.
func TestTwoAnalysesSharingALayerAtOncePullItOnce(t *testing.T) {
	g := NewWithT(t)
	ctx := testContext(t)
	f := newFixture(t)
	base := testutil.PaddingLayer(8<<20, 7)
	var refs []scanner.ImageRef
	for i := range 2 {
		img := must(testutil.NPMImage([]v1.Layer{base}, []testutil.NPMPackage{{Name: fmt.Sprintf("app-%d", i), Version: "1.0.0"}}))
		refs = append(refs, f.push(t, fmt.Sprintf("concurrent/app-%d", i), img))
	}
	baseDigest := must(base.Digest()).String()
	s := f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), LayerCacheMaxBytes: 64 << 20, Worker: workerOptions(512 << 20)})
	var baseGETs sync.Map
	f.reg.SetFault(func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/blobs/"+baseDigest) && r.Method == http.MethodGet {
			n, _ := baseGETs.LoadOrStore("n", new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
			// Slow enough that the second analysis asks while the first analyses the layer.
			time.Sleep(500 * time.Millisecond)
		}
		return false
	})
	var wg sync.WaitGroup
	errs := make([]error, len(refs))
	for i, ref := range refs {
		wg.Go(func() { _, _, errs[i] = s.Inventory(ctx, ref) })
	}
	wg.Wait()
	for _, err := range errs {
		g.Expect(err).NotTo(HaveOccurred())
	}
	n, _ := baseGETs.Load("n")
	g.Expect(n.(*atomic.Int32).Load()).To(BeEquivalentTo(1))
	stats, _ := s.LayerCacheStats()
	g.Expect(stats.Hits).To(BeEquivalentTo(1), "the second analysis found the base in the cache")
	g.Expect(stats.Misses).To(BeEquivalentTo(3))
}

// TestTheLayerCacheStaysUnderItsBound analyses images whose layers together are more than the
// bound: the cache evicts the least recently used and stays under it, and an image whose entries
// were evicted is analysed again with the same findings.
func TestTheLayerCacheStaysUnderItsBound(t *testing.T) {
	g := NewWithT(t)
	ctx := testContext(t)
	f := newFixture(t)
	// 24 images of one layer each, of about the same size.
	var imgs []v1.Image
	for i := range 24 {
		var pkgs []testutil.NPMPackage
		for j := range 20 {
			pkgs = append(pkgs, testutil.NPMPackage{Name: fmt.Sprintf("dep-%02d-%02d", i, j), Version: "1.0.0"})
		}
		imgs = append(imgs, must(testutil.NPMImage(nil, append(pkgs, testutil.NPMPackage{Name: "lodash", Version: "4.17.20"}))))
	}
	dir := t.TempDir()
	// The bound holds eight of the largest entry (one entry may take an eighth of it): fewer than
	// the 24 layers.
	probeDir := t.TempDir()
	probe := f.newScanner(t, scanner.Options{CacheDir: probeDir, LayerCacheMaxBytes: 64 << 20})
	ref0 := f.push(t, "bound/app-00", imgs[0])
	_, want0, err := probe.Scan(ctx, ref0)
	g.Expect(err).NotTo(HaveOccurred())
	var largest int64
	for _, p := range must(filepath.Glob(filepath.Join(probeDir, "layers", "*", "*.layer"))) {
		largest = max(largest, must(os.Stat(p)).Size())
	}
	bound := 8 * largest
	s := f.newScanner(t, scanner.Options{CacheDir: dir, LayerCacheMaxBytes: bound})
	for i, img := range imgs {
		_, _, err := s.Scan(ctx, f.push(t, fmt.Sprintf("bound/app-%02d", i), img))
		g.Expect(err).NotTo(HaveOccurred())
		stats, _ := s.LayerCacheStats()
		g.Expect(stats.Bytes).To(BeNumerically("<=", bound))
		g.Expect(dirBytes(t, filepath.Join(dir, "layers"))).To(BeNumerically("<=", bound), "on disk too")
	}
	stats, _ := s.LayerCacheStats()
	g.Expect(stats.Evictions).To(BeNumerically(">", 0))

	// The first image's layers are gone: analysed again, same findings.
	again := f.newScanner(t, scanner.Options{CacheDir: dir, LayerCacheMaxBytes: bound})
	f.reg.ResetCounts()
	_, res, err := again.Scan(ctx, scanner.ImageRef{Repository: ref0.Repository, Digest: ref0.Digest, AnalyzedAfter: time.Now().Add(time.Hour)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Findings).To(Equal(want0.Findings))
}

// TestACorruptLayerEntryIsAnalysedAgain damages every entry of the cache in a different way:
// each is found out, removed and its layer analysed again, with the findings of a clean cache.
func TestACorruptLayerEntryIsAnalysedAgain(t *testing.T) {
	g := NewWithT(t)
	ctx := testContext(t)
	f := newFixture(t)
	imgs, _ := sharedBaseImages(t, 2)
	dir := t.TempDir()
	s := f.newScanner(t, scanner.Options{CacheDir: dir, LayerCacheMaxBytes: 64 << 20})
	var refs []scanner.ImageRef
	var want []*scanner.Result
	for i, img := range imgs {
		ref := f.push(t, fmt.Sprintf("corrupt/app-%02d", i), img)
		_, res, err := s.Scan(ctx, ref)
		g.Expect(err).NotTo(HaveOccurred())
		refs, want = append(refs, ref), append(want, res)
	}
	entries, err := filepath.Glob(filepath.Join(dir, "layers", "*", "*.layer"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(entries).To(HaveLen(4))
	damage := []func([]byte) []byte{
		func(b []byte) []byte { b[len(b)-1] ^= 0xff; return b }, // a flipped bit
		func(b []byte) []byte { return b[:len(b)/2] },           // torn by a power cut
		func([]byte) []byte { return nil },                      // empty
		func(b []byte) []byte { return append([]byte("x"), b...) },
	}
	for i, p := range entries {
		g.Expect(os.WriteFile(p, damage[i](must(os.ReadFile(p))), 0o600)).To(Succeed())
	}
	again := f.newScanner(t, scanner.Options{CacheDir: dir, LayerCacheMaxBytes: 64 << 20})
	f.reg.ResetCounts()
	for i, ref := range refs {
		ref.AnalyzedAfter = time.Now().Add(time.Hour)
		_, res, err := again.Scan(ctx, ref)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res.Findings).To(Equal(want[i].Findings))
	}
	g.Expect(f.reg.Counts().BlobGETs).To(Equal(4+2), "every layer pulled again, and the configs")
	stats, _ := again.LayerCacheStats()
	g.Expect(stats.Corrupt).To(BeEquivalentTo(4))
	g.Expect(stats.Hits).To(BeZero())
}

func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() && filepath.Base(filepath.Dir(p)) != "locks" {
			total += info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// sortedApps orders each application's packages by ID: Trivy's merge of node_modules packages
// into one application does not keep an order from one analysis to the next, cache or not.
func sortedApps(apps []ftypes.Application) []ftypes.Application {
	out := slices.Clone(apps)
	for i := range out {
		out[i].Packages = slices.Clone(out[i].Packages)
		slices.SortFunc(out[i].Packages, func(a, b ftypes.Package) int { return strings.Compare(a.ID, b.ID) })
	}
	return out
}

// ids are the vulnerability IDs of res.
func ids(res *scanner.Result) []string {
	var out []string
	for _, f := range res.Findings {
		out = append(out, f.ID)
	}
	return out
}

// TestAnImageCannotPoisonTheLayerCache pushes an image whose config claims, for a layer with no
// packages, the diff ID of the Debian fixture's layer: its analysis is refused (the layer's
// content does not hash to that diff ID), nothing is kept under that layer's key, and the real
// Debian image then analysed has its findings. An image that gives one diff ID to two different
// blobs is refused before any layer is read.
func TestAnImageCannotPoisonTheLayerCache(t *testing.T) {
	g := NewWithT(t)
	ctx := testContext(t)
	f := newFixture(t)
	s := f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), LayerCacheMaxBytes: 64 << 20})
	debian := debianImage(t)
	debianDiffID := must(must(debian.Layers())[0].DiffID())

	empty := must(testutil.LayerFromFiles(map[string][]byte{"etc/hostname": []byte("nothing here\n")}))
	liar := must(testutil.ImageFromLayers(testutil.LinuxAMD64, empty))
	cfg := must(liar.ConfigFile()).DeepCopy()
	cfg.RootFS.DiffIDs[0] = debianDiffID
	liar = must(mutate.ConfigFile(liar, cfg))
	_, _, err := s.Scan(ctx, f.push(t, "poison/liar", liar))
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "%v", err)
	g.Expect(err).To(MatchError(ContainSubstring("not the diff ID")))
	stats, _ := s.LayerCacheStats()
	g.Expect(stats.Entries).To(BeZero())

	_, res, err := s.Scan(ctx, f.push(t, "poison/debian", debian))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ids(res)).To(ContainElements("CVE-2026-2001", "CVE-2026-2002"))

	twice := must(testutil.ImageFromLayers(testutil.LinuxAMD64, empty, must(testutil.LayerFromFiles(map[string][]byte{"b": []byte("b")}))))
	cfg = must(twice.ConfigFile()).DeepCopy()
	cfg.RootFS.DiffIDs[1] = cfg.RootFS.DiffIDs[0]
	twice = must(mutate.ConfigFile(twice, cfg))
	f.reg.ResetCounts()
	_, _, err = s.Scan(ctx, f.push(t, "poison/twice", twice))
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "%v", err)
	g.Expect(err).To(MatchError(ContainSubstring("the same diff ID")))
	g.Expect(f.reg.Counts().BlobGETs).To(Equal(1), "the config only")
}
