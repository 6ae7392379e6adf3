package scanner

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/registry"
)

func testKey(i int) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(fmt.Appendf(nil, "key-%d", i)))
}
func testDiffID(i int) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(fmt.Appendf(nil, "diff-%d", i)))
}

func testDigest(i int) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(fmt.Appendf(nil, "blob-%d", i)))
}

// testView is the view of an image of one layer, blob i, which the analysis verified.
func testView(dir string, i int) *layerView {
	return newLayerView(dir, layerViewOptions{MaxEntry: 1 << 20, Verified: func(diffID string) (string, bool) {
		return testDigest(i), diffID == testDiffID(i)
	}}, []string{testDiffID(i)}, []string{testDigest(i)})
}

func testBlob(i int) ftypes.BlobInfo {
	return ftypes.BlobInfo{SchemaVersion: ftypes.BlobJSONSchemaVersion, DiffID: testDiffID(i),
		PackageInfos: []ftypes.PackageInfo{{FilePath: "var/lib/dpkg/status", Packages: ftypes.Packages{{Name: fmt.Sprintf("pkg-%d", i), Version: "1.0"}}}}}
}

// put writes blob i through a view, as an analysis does, and records it.
func put(t *testing.T, c *LayerCache, i int) {
	t.Helper()
	v := testView(c.Dir(), i)
	ctx := context.Background()
	_, missing, err := v.MissingBlobs(ctx, "artifact", []string{testKey(i)})
	if err != nil || len(missing) != 1 {
		t.Fatalf("missing %v, %v", missing, err)
	}
	if err := v.PutBlob(ctx, testKey(i), testBlob(i)); err != nil {
		t.Fatal(err)
	}
	v.Close()
	c.Record(v.Use())
}

// hit looks blob i up through a view and records the use; it reports whether it was found.
func hit(t *testing.T, c *LayerCache, i int) bool {
	t.Helper()
	v := testView(c.Dir(), i)
	_, missing, err := v.MissingBlobs(context.Background(), "artifact", []string{testKey(i)})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	c.Record(v.Use())
	return len(missing) == 0
}

func TestLayerCacheEvictsTheLeastRecentlyUsed(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	probe, err := OpenLayerCache(t.TempDir(), "v1", 1<<30)
	g.Expect(err).NotTo(HaveOccurred())
	put(t, probe, 0)
	entry := probe.Stats().Bytes
	c, err := OpenLayerCache(dir, "v1", 3*entry+entry/2)
	g.Expect(err).NotTo(HaveOccurred())
	for i := range 3 {
		put(t, c, i)
	}
	g.Expect(c.Stats().Entries).To(BeEquivalentTo(3))
	g.Expect(hit(t, c, 0)).To(BeTrue()) // 0 is now the most recent; 1 the least
	put(t, c, 3)
	g.Expect(c.Stats().Entries).To(BeEquivalentTo(3))
	g.Expect(c.Stats().Evictions).To(BeEquivalentTo(1))
	g.Expect(c.Stats().Bytes).To(BeNumerically("<=", c.MaxBytes()))
	g.Expect(hit(t, c, 1)).To(BeFalse(), "the least recently used was evicted")
	g.Expect(hit(t, c, 0)).To(BeTrue())

	// The order survives a restart (modification times), and so does the bound.
	time.Sleep(10 * time.Millisecond)
	g.Expect(hit(t, c, 2)).To(BeTrue())
	time.Sleep(10 * time.Millisecond)
	g.Expect(hit(t, c, 0)).To(BeTrue())
	restarted, err := OpenLayerCache(dir, "v1", 2*entry+entry/2)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(restarted.Stats().Entries).To(BeEquivalentTo(2))
	g.Expect(hit(t, restarted, 3)).To(BeFalse(), "3 was used least recently")
	g.Expect(hit(t, restarted, 0)).To(BeTrue())
	g.Expect(hit(t, restarted, 2)).To(BeTrue())

	// Another Trivy version's cache is removed at the start, and so are half-written files.
	g.Expect(os.WriteFile(filepath.Join(restarted.Dir(), "tmp-123"), []byte("half"), 0o600)).To(Succeed())
	other, err := OpenLayerCache(dir, "v2", 1<<20)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(other.Stats().Entries).To(BeZero())
	g.Expect(filepath.Join(dir, "layers", "v1")).NotTo(BeADirectory())
}

// TestALayerEntryServesOnlyItsLayer checks an entry against the layer it is asked for: under the
// key of another layer (a renamed or swapped file) it is refused and removed.
func TestALayerEntryServesOnlyItsLayer(t *testing.T) {
	g := NewWithT(t)
	c, err := OpenLayerCache(t.TempDir(), "v1", 1<<30)
	g.Expect(err).NotTo(HaveOccurred())
	put(t, c, 0)
	put(t, c, 1)
	g.Expect(os.Rename(layerPath(c.Dir(), testKey(0)), layerPath(c.Dir(), testKey(1)))).To(Succeed())
	v := testView(c.Dir(), 1)
	_, missing, err := v.MissingBlobs(context.Background(), "artifact", []string{testKey(1)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(missing).To(Equal([]string{testKey(1)}))
	g.Expect(v.Use().Corrupt).To(Equal(1))
	g.Expect(layerPath(c.Dir(), testKey(1))).NotTo(BeAnExistingFile())
	v.Close()

	// A blob put under a key whose layer it does not describe is not written.
	v = testView(c.Dir(), 1)
	_, _, err = v.MissingBlobs(context.Background(), "artifact", []string{testKey(1)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v.PutBlob(context.Background(), testKey(1), testBlob(0))).To(Succeed())
	v.Close()
	g.Expect(v.Use().Puts).To(BeEmpty())
	g.Expect(layerPath(c.Dir(), testKey(1))).NotTo(BeAnExistingFile())

	// Nor is one of a layer the analysis did not download and check.
	v = newLayerView(c.Dir(), layerViewOptions{MaxEntry: 1 << 20, Verified: func(string) (string, bool) { return "", false }},
		[]string{testDiffID(1)}, []string{testDigest(1)})
	_, _, err = v.MissingBlobs(context.Background(), "artifact", []string{testKey(1)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v.PutBlob(context.Background(), testKey(1), testBlob(1))).To(Succeed())
	v.Close()
	g.Expect(layerPath(c.Dir(), testKey(1))).NotTo(BeAnExistingFile())

	// An entry of the same layer in another blob (another compression) does not serve this one.
	put(t, c, 1)
	v = newLayerView(c.Dir(), layerViewOptions{MaxEntry: 1 << 20}, []string{testDiffID(1)}, []string{testDigest(2)})
	_, missing, err = v.MissingBlobs(context.Background(), "artifact", []string{testKey(1)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(missing).To(HaveLen(1))
	v.Close()

	// A symbolic link in place of an entry is not followed.
	put(t, c, 3)
	g.Expect(os.Remove(layerPath(c.Dir(), testKey(3)))).To(Succeed())
	g.Expect(os.Symlink("/dev/zero", layerPath(c.Dir(), testKey(3)))).To(Succeed())
	g.Expect(hit(t, c, 3)).To(BeFalse())
}

// TestALayerCacheReadIsBounded: the packages of the entries an analysis reads count against its
// --max-packages before they are decoded, and entries older than a re-analysis asks for are not
// used.
func TestALayerCacheReadIsBounded(t *testing.T) {
	g := NewWithT(t)
	c, err := OpenLayerCache(t.TempDir(), "v1", 1<<30)
	g.Expect(err).NotTo(HaveOccurred())
	put(t, c, 0)
	put(t, c, 1)
	keys := []string{testKey(0), testKey(1)}
	digests := []string{testDigest(0), testDigest(1)}
	diffIDs := []string{testDiffID(0), testDiffID(1)}
	var spent int64
	spend := func(n int64) error {
		if spent += n; spent > 1 {
			return registry.Errorf(registry.KindUnsupported, "%d packages (--max-packages)", spent)
		}
		return nil
	}
	v := newLayerView(c.Dir(), layerViewOptions{MaxEntry: 1 << 20, Spend: spend}, diffIDs, digests)
	_, _, err = v.MissingBlobs(context.Background(), "artifact", keys)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported))
	g.Expect(err).To(MatchError(ContainSubstring("--max-packages")))
	v.Close()

	v = newLayerView(c.Dir(), layerViewOptions{MaxEntry: 1 << 20, AnalyzedAfter: time.Now().Add(time.Minute)}, diffIDs, digests)
	_, missing, err := v.MissingBlobs(context.Background(), "artifact", keys)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(missing).To(Equal(keys), "made before the re-analysis asked for")
	v.Close()
}

// TestAViewWaitsForTheAnalysisOfASharedLayer: while one view analyses a layer, another asking
// for it waits, then finds it in the cache; a view that ends without writing lets the next one
// analyse it.
func TestAViewWaitsForTheAnalysisOfASharedLayer(t *testing.T) {
	g := NewWithT(t)
	c, err := OpenLayerCache(t.TempDir(), "v1", 1<<30)
	g.Expect(err).NotTo(HaveOccurred())
	ctx := context.Background()
	first := testView(c.Dir(), 0)
	_, missing, err := first.MissingBlobs(ctx, "a", []string{testKey(0)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(missing).To(HaveLen(1))

	done := make(chan []string)
	second := testView(c.Dir(), 0)
	go func() {
		_, missing, _ := second.MissingBlobs(ctx, "b", []string{testKey(0)})
		done <- missing
	}()
	g.Consistently(done, 200*time.Millisecond).ShouldNot(Receive(), "it waits while the first analyses the layer")
	g.Expect(first.PutBlob(ctx, testKey(0), testBlob(0))).To(Succeed())
	g.Eventually(done).Should(Receive(BeEmpty()))
	second.Close()
	first.Close()

	// A view that ends (its analysis failed) without writing: the next one is told it is missing.
	third := testView(c.Dir(), 1)
	_, missing, _ = third.MissingBlobs(ctx, "c", []string{testKey(1)})
	g.Expect(missing).To(HaveLen(1))
	go func() {
		fourth := testView(c.Dir(), 1)
		_, missing, _ := fourth.MissingBlobs(ctx, "d", []string{testKey(1)})
		fourth.Close()
		done <- missing
	}()
	g.Consistently(done, 100*time.Millisecond).ShouldNot(Receive())
	third.Close()
	g.Eventually(done).Should(Receive(HaveLen(1)))

	// A waiting view gives up with its deadline, and analyses the layer itself.
	fifth := testView(c.Dir(), 2)
	_, _, _ = fifth.MissingBlobs(ctx, "e", []string{testKey(2)})
	defer fifth.Close()
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	sixth := testView(c.Dir(), 2)
	_, missing, err = sixth.MissingBlobs(short, "f", []string{testKey(2)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(missing).To(HaveLen(1))
	sixth.Close()
}
