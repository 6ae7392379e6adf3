package scanner_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net/http"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
)

// heapBound is the memory limit the hostile images are scanned under: a quarter of the chart's
// default pod limit.
const heapBound = 256 << 20

// lazyBlob is a blob the registry serves generated on the fly (so that the test process never
// holds it), with its real digest.
type lazyBlob struct {
	size   int64
	open   func() io.Reader
	digest v1.Hash
}

func newLazyBlob(size int64, open func() io.Reader) *lazyBlob {
	h := sha256.New()
	if _, err := io.Copy(h, open()); err != nil {
		panic(err)
	}
	return &lazyBlob{size: size, open: open, digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}}
}

// bigConfig is an image config of size bytes: a valid one whose comment is padded with "A"s.
func bigConfig(size int64, diffIDs []v1.Hash) *lazyBlob {
	ids, _ := json.Marshal(diffIDs)
	prefix := fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":%s},"comment":"`, ids)
	suffix := `"}`
	padding := size - int64(len(prefix)+len(suffix))
	return newLazyBlob(size, func() io.Reader {
		return io.MultiReader(strings.NewReader(prefix), io.LimitReader(repeatByte('A'), padding), strings.NewReader(suffix))
	})
}

type repeatByte byte

func (b repeatByte) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// rawManifest is a manifest to put as it is.
type rawManifest struct{ raw []byte }

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// peakHeap samples the heap's live objects every millisecond until stop is called, and returns
// the highest value seen.
// settleHeap collects until the heap stops shrinking (at most 10 seconds) and returns what it
// holds then: a goroutine an earlier test left (an analysis winding down after its deadline) must
// not count as this test's, nor what earlier tests keep for the process's life (Trivy's license
// classifier corpus, loaded by the first jar analysed).
func settleHeap(t testing.TB) uint64 {
	t.Helper()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var prev uint64
	for deadline := time.Now().Add(10 * time.Second); ; {
		runtime.GC()
		metrics.Read(sample)
		v := sample[0].Value.Uint64()
		if (prev != 0 && v+1<<20 > prev) || time.Now().After(deadline) {
			return v
		}
		prev = v
		time.Sleep(100 * time.Millisecond)
	}
}

func peakHeap() (stop func() uint64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak.Load()
	}
}

// TestHostileImagesStayUnderTheHeapBound scans, under a 256 MiB memory limit, an image with a
// 512 MiB config, one with a 1 GiB (compressible) package database, one declaring a 5 GiB
// layer, one with a 48 MiB Cargo.lock of 786,432 packages and one whose config has no size. Each ends as UnsupportedImage naming the limit, before the bytes it bounds are read,
// and the heap stays under the bound throughout.
func TestHostileImagesStayUnderTheHeapBound(t *testing.T) {
	g := NewWithT(t)
	var lazyMu sync.Mutex
	lazy := map[string]*lazyBlob{}
	var lazyServed atomic.Int64
	serveLazy := testutil.WithHandlerWrapper(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			lazyMu.Lock()
			b := lazy[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]
			lazyMu.Unlock()
			if b == nil || !strings.Contains(r.URL.Path, "/blobs/") {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Length", fmt.Sprint(b.size))
			w.Header().Set("Docker-Content-Digest", b.digest.String())
			n, _ := io.Copy(w, b.open())
			lazyServed.Add(n)
		})
	})
	f := newFixture(t, serveLazy)
	base := alpineImage(t)
	baseLayers := must(base.Layers())
	baseManifest := must(base.Manifest())
	baseDiffIDs := must(base.ConfigFile()).RootFS.DiffIDs

	// putManifest pushes a manifest of config and layers (the base's, then extra).
	putManifest := func(repo string, config v1.Descriptor, extra ...v1.Descriptor) scanner.ImageRef {
		m := &v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: config,
			Layers: append(append([]v1.Descriptor{}, baseManifest.Layers...), extra...)}
		raw := must(json.Marshal(m))
		ref := must(name.ParseReference(f.reg.Host()+"/"+repo+":1", name.Insecure))
		// The base's layers are in repo too.
		for _, l := range baseLayers {
			g.Expect(remote.WriteLayer(ref.Context(), l)).To(Succeed())
		}
		g.Expect(remote.Put(ref, rawManifest{raw})).To(Succeed())
		d, _, _ := v1.SHA256(bytes.NewReader(raw))
		return scanner.ImageRef{Repository: f.reg.Host() + "/" + repo, Digest: d.String()}
	}

	// 1. A 512 MiB config, served lazily.
	config := bigConfig(512<<20, baseDiffIDs)
	lazy[config.digest.String()] = config
	bigConfigRef := putManifest("hostile/big-config", v1.Descriptor{MediaType: types.OCIConfigJSON, Size: config.size, Digest: config.digest})

	// 2. A 1 GiB dpkg status of the same stanza over and over: 1 MiB compressed.
	head := "Package: p\nStatus: install ok installed\nVersion: 1.0\nDescription: "
	stanza := []byte(head + strings.Repeat("x", 128-len(head)-2) + "\n\n")
	dbRef := f.push(t, "hostile/package-db", must(testutil.ImageFromLayers(testutil.LinuxAMD64,
		append(baseLayers, testutil.CompressibleFileLayer("var/lib/dpkg/status", 1<<30, stanza))...)))

	// 3. A layer declared 5 GiB (never uploaded: it must not be asked for).
	smallConfig := must(json.Marshal(map[string]any{"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": append(append([]v1.Hash{}, baseDiffIDs...), v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("5", 64)})}}))
	configLayer := static.NewLayer(smallConfig, types.OCIConfigJSON)
	g.Expect(remote.WriteLayer(must(name.NewRepository(f.reg.Host()+"/hostile/huge-layer", name.Insecure)), configLayer)).To(Succeed())
	hugeRef := putManifest("hostile/huge-layer",
		v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(smallConfig)), Digest: must(configLayer.Digest())},
		v1.Descriptor{MediaType: types.OCILayer, Size: 5 << 30, Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("6", 64)}})

	// 4. A 48 MiB Cargo.lock of 786,432 tiny packages: about 50 KB compressed, 2 GiB of heap
	// once Trivy parsed it.
	entry := "[[package]]\nname = \"a\"\nversion = \"1.0.0\"\n"
	entry += strings.Repeat("#", 63-len(entry)) + "\n"
	cargoRef := f.push(t, "hostile/cargo", must(testutil.ImageFromLayers(testutil.LinuxAMD64,
		append(baseLayers, testutil.CompressibleFileLayer("app/Cargo.lock", 48<<20, []byte(entry)))...)))

	// 5. A config of unknown size (-1), which go-containerregistry would read whole.
	unsized := bigConfig(512<<20, baseDiffIDs)
	lazy[unsized.digest.String()] = unsized
	unsizedRef := putManifest("hostile/unsized-config", v1.Descriptor{MediaType: types.OCIConfigJSON, Size: -1, Digest: unsized.digest})

	s := f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), Timeout: time.Minute})
	old := debug.SetMemoryLimit(heapBound)
	defer debug.SetMemoryLimit(old)
	runtime.GC()
	f.reg.ResetCounts()
	stop := peakHeap()
	for _, tt := range []struct {
		ref  scanner.ImageRef
		want string
	}{
		{bigConfigRef, fmt.Sprintf("the image config is %d bytes, more than the limit of %d (--max-config-bytes)", 512<<20, scanner.DefaultLimits.MaxConfigBytes)},
		{dbRef, fmt.Sprintf("a package database var/lib/dpkg/status of %d bytes, more than the limit of %d (--max-package-db-bytes)", 1<<30, scanner.DefaultLimits.MaxPackageDBBytes)},
		{hugeRef, fmt.Sprintf("more than the limit of %d (--max-image-bytes)", scanner.DefaultLimits.MaxCompressedBytes)},
		{cargoRef, fmt.Sprintf("(app/Cargo.lock among them), more than the limit of %d (--max-packages)", scanner.DefaultLimits.MaxPackages)},
		{unsizedRef, "the image config has no size in the manifest (-1)"},
	} {
		_, _, err := s.Scan(testContext(t), tt.ref)
		g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "%s: %v", tt.ref.Repository, err)
		g.Expect(err).To(MatchError(ContainSubstring(tt.want)), tt.ref.Repository)
	}
	peak := stop()
	t.Logf("peak heap while scanning the five images: %.1f MiB (bound %d MiB); lazy blob bytes served: %d",
		float64(peak)/(1<<20), heapBound>>20, lazyServed.Load())
	g.Expect(peak).To(BeNumerically("<", heapBound))
	// The config was never asked for, nor the 5 GiB layer: only the package database's small
	// blob and the base layers were read.
	g.Expect(lazyServed.Load()).To(BeZero())
	g.Expect(f.reg.Counts().BlobGETs).To(BeNumerically("<=", 3*len(baseLayers)+4))
}

// TestInventoryBounds checks the caps on what is kept of an image: an image with more packages
// than --max-packages, or whose inventory encodes past --max-inventory-bytes, is refused with an
// UnsupportedImage error naming the flag, and nothing is kept for it.
func TestInventoryBounds(t *testing.T) {
	f := newFixture(t)
	ref := f.push(t, "bounds/alpine", alpineImage(t))
	for _, tt := range []struct {
		limits scanner.Limits
		want   string
	}{
		{scanner.Limits{MaxPackages: 1}, "more than the limit of 1 (--max-packages)"},
		{scanner.Limits{MaxInventoryBytes: 64}, "more than 64 bytes encoded (--max-inventory-bytes)"},
	} {
		g := NewWithT(t)
		cache := t.TempDir()
		s := f.newScanner(t, scanner.Options{CacheDir: cache, Limits: tt.limits})
		_, _, err := s.Scan(context.Background(), ref)
		g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "%v", err)
		g.Expect(err).To(MatchError(ContainSubstring(tt.want)))
		g.Expect(s.Analysed(ref.Digest, "")).To(BeFalse())
	}
}

// TestRedirectedBlobsAreBlobs serves every layer through a redirect to a storage URL without
// /blobs/ in its path, as ECR, Quay and Artifact Registry do: a layer larger than the bound on
// answers other than blobs (4 MiB) is still analysed.
func TestRedirectedBlobsAreBlobs(t *testing.T) {
	g := NewWithT(t)
	var redirected atomic.Int64
	storage := testutil.WithHandlerWrapper(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if rest, ok := strings.CutPrefix(r.URL.Path, "/storage/"); ok {
				r2 := r.Clone(r.Context())
				r2.URL.Path = "/v2/" + strings.Replace(rest, "/objects/", "/blobs/", 1)
				next.ServeHTTP(w, r2)
				return
			}
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") && r.URL.Query().Get("served") == "" {
				redirected.Add(1)
				http.Redirect(w, r, "/storage/"+strings.Replace(strings.TrimPrefix(r.URL.Path, "/v2/"), "/blobs/", "/objects/", 1)+"?served=1", http.StatusTemporaryRedirect)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	f := newFixture(t, storage)
	base := alpineImage(t)
	// Incompressible bytes, so the layer blob itself is over 4 MiB.
	random := make([]byte, 6<<20)
	_, _ = mathrand.NewChaCha8([32]byte{1}).Read(random)
	layer := must(testutil.LayerFromFiles(map[string][]byte{"srv/random.bin": random}))
	img := must(testutil.ImageFromLayers(testutil.LinuxAMD64, append(must(base.Layers()), layer)...))
	ref := f.push(t, "redirected/app", img)
	s := f.newScanner(t, scanner.Options{CacheDir: t.TempDir()})
	_, _, err := s.Scan(context.Background(), ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(redirected.Load()).To(BeNumerically(">=", 3))
	g.Expect(must(layer.Size())).To(BeNumerically(">", 4<<20))
}
