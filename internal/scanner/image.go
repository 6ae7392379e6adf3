package scanner

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/imageguard/imageguard/internal/registry"
)

// Limits bound what one analysis may pull, expand and keep, so that a huge or hostile image ends
// with an UnsupportedImage error naming the limit instead of filling the disk or the memory.
// Each is checked before the bytes it bounds are read: sizes from the manifest's descriptors,
// files from their tar headers. A zero field takes its DefaultLimits value; a negative one turns
// the check off.
type Limits struct {
	// MaxCompressedBytes bounds the sum of the compressed layer sizes the manifest declares: the
	// disk one analysis uses under the cache folder.
	MaxCompressedBytes int64
	// MaxUncompressedBytes bounds the expanded size of each layer (decompression bombs).
	MaxUncompressedBytes int64
	// MaxTempBytes bounds Trivy's temporary files in one analysis: the files its analyzers copy
	// out of a layer (jars, say) and the archives they unpack (a jar nested in a jar, which can
	// expand thousands of times over). Enforced on the analysis worker: each file it writes is at
	// most max(MaxCompressedBytes, MaxTempBytes), and its folder, pulled layers included, at
	// most MaxCompressedBytes + MaxTempBytes, watched as it grows; past it the worker is stopped.
	MaxTempBytes int64
	// MaxLayers bounds the number of layers.
	MaxLayers int
	// MaxFiles bounds the number of entries in each layer.
	MaxFiles int
	// MaxConfigBytes bounds the image config blob, which is read whole into memory.
	MaxConfigBytes int64
	// MaxPackageDBBytes bounds each package database and manifest Trivy parses into memory
	// (apk, dpkg and rpm databases, package.json, Python METADATA, gemspecs): what it finds in
	// them is kept in memory, so a compressible one would expand without bound.
	MaxPackageDBBytes int64
	// MaxPackages bounds the packages of one image: estimated from its package files before Trivy
	// parses them (Trivy's parsers keep every package, about 2.6 KiB of heap each), and counted
	// in the inventory after.
	MaxPackages int
	// MaxInventoryBytes bounds the encoded size of one kept inventory.
	MaxInventoryBytes int64
}

// DefaultLimits suit real images: 2 GiB pulled, 8 GiB expanded per layer, 2 GiB of temporary
// files, 256 layers, a million files per layer, an 8 MiB config, 64 MiB package databases, 50,000
// packages and a 64 MiB inventory. docs/operations.md gives the arithmetic that sizes them to the
// pod.
var DefaultLimits = Limits{
	MaxCompressedBytes:   2 << 30,
	MaxUncompressedBytes: 8 << 30,
	MaxTempBytes:         2 << 30,
	MaxLayers:            256,
	MaxFiles:             1 << 20,
	MaxConfigBytes:       8 << 20,
	MaxPackageDBBytes:    64 << 20,
	MaxPackages:          50_000,
	MaxInventoryBytes:    64 << 20,
}

// withDefaults returns l with each zero field set to its default and each negative one to 0 (no
// bound).
func (l Limits) withDefaults() Limits {
	pick64 := func(v, d int64) int64 {
		switch {
		case v == 0:
			return d
		case v < 0:
			return 0
		}
		return v
	}
	pick := func(v, d int) int { return int(pick64(int64(v), int64(d))) }
	d := DefaultLimits
	return Limits{
		MaxCompressedBytes:   pick64(l.MaxCompressedBytes, d.MaxCompressedBytes),
		MaxUncompressedBytes: pick64(l.MaxUncompressedBytes, d.MaxUncompressedBytes),
		MaxTempBytes:         pick64(l.MaxTempBytes, d.MaxTempBytes),
		MaxLayers:            pick(l.MaxLayers, d.MaxLayers),
		MaxFiles:             pick(l.MaxFiles, d.MaxFiles),
		MaxConfigBytes:       pick64(l.MaxConfigBytes, d.MaxConfigBytes),
		MaxPackageDBBytes:    pick64(l.MaxPackageDBBytes, d.MaxPackageDBBytes),
		MaxPackages:          pick(l.MaxPackages, d.MaxPackages),
		MaxInventoryBytes:    pick64(l.MaxInventoryBytes, d.MaxInventoryBytes),
	}
}

// fetchedImage is a remote image whose layers are downloaded, when Trivy first asks for one,
// once into a private folder and checked against the limits; Trivy reads them from there. Trivy
// asks only for the layers its cache lacks, so a layer analysed before is never pulled.
type fetchedImage struct {
	v1.Image
	ctx    context.Context
	dir    string
	limits Limits
	descs  []v1.Descriptor
	diffs  []v1.Hash

	mu     sync.Mutex
	budget packageBudget
	got    map[int]v1.Layer
}

func (f *fetchedImage) Layers() ([]v1.Layer, error) {
	out := make([]v1.Layer, len(f.descs))
	for i := range f.descs {
		l, err := f.layer(i)
		if err != nil {
			return nil, err
		}
		out[i] = l
	}
	return out, nil
}

func (f *fetchedImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	for i, d := range f.descs {
		if d.Digest == h {
			return f.layer(i)
		}
	}
	return nil, fmt.Errorf("no layer with digest %s", h)
}

func (f *fetchedImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	for i, d := range f.diffs {
		if d == h {
			return f.layer(i)
		}
	}
	return nil, fmt.Errorf("no layer with diff ID %s", h)
}

// layer downloads and checks layer i, once.
func (f *fetchedImage) layer(i int) (v1.Layer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.got[i]; ok {
		return l, nil
	}
	desc := f.descs[i]
	fl := &fileLayer{
		path:      filepath.Join(f.dir, fmt.Sprintf("layer-%03d", i)),
		digest:    desc.Digest,
		diffID:    f.diffs[i],
		size:      desc.Size,
		mediaType: desc.MediaType,
	}
	if err := download(f.ctx, f.Image, desc, fl.path); err != nil {
		return nil, registry.Classify(err)
	}
	layer, err := partial.CompressedToLayer(fl)
	if err != nil {
		return nil, registry.Classify(err)
	}
	if err := checkLayer(f.ctx, layer, desc.Digest, f.diffs[i], f.limits, &f.budget); err != nil {
		return nil, registry.Classify(err)
	}
	f.got[i] = layer
	return layer, nil
}

// verified returns the compressed digest of the layer whose diff ID is diffID when it was
// downloaded and passed checkLayer (its content hashes to diffID) in this analysis.
func (f *fetchedImage) verified(diffID string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, d := range f.diffs {
		if _, ok := f.got[i]; ok && d.String() == diffID {
			return f.descs[i].Digest.String(), true
		}
	}
	return "", false
}

// spendCached counts n packages of a layer read from the layer cache into the image's package
// budget, where its downloaded layers' packages count, and fails past --max-packages.
func (f *fetchedImage) spendCached(n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.budget.packages += n
	if limit := f.limits.MaxPackages; limit > 0 && f.budget.packages > int64(limit) {
		return registry.Errorf(registry.KindUnsupported, "the image's layers hold %d packages or more, more than the limit of %d (--max-packages)", f.budget.packages, limit)
	}
	return nil
}

// layerDigests are the compressed digests of the image's layers in order, as its manifest gives
// them.
func (f *fetchedImage) layerDigests() []string {
	out := make([]string, len(f.descs))
	for i, d := range f.descs {
		out[i] = d.Digest.String()
	}
	return out
}

// diffIDStrings are the image's layers' diff IDs in order.
func (f *fetchedImage) diffIDStrings() []string {
	out := make([]string, len(f.diffs))
	for i, d := range f.diffs {
		out[i] = d.String()
	}
	return out
}

// fileLayer is a compressed layer kept in a local file.
type fileLayer struct {
	path      string
	digest    v1.Hash
	diffID    v1.Hash
	size      int64
	mediaType types.MediaType
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

// fetchImage checks img's manifest and config against limits, and returns the image whose
// layers are downloaded into dir when first read (each blob is read from the registry at most
// once), checked as they arrive.
func fetchImage(ctx context.Context, img v1.Image, dir string, limits Limits) (*fetchedImage, error) {
	manifest, err := img.Manifest()
	if err != nil {
		return nil, registry.Classify(fmt.Errorf("reading the manifest: %w", err))
	}
	// The config is read whole: its declared size is checked first. go-containerregistry reads no
	// more than a config declares, but all of one of unknown size (-1): a size is required.
	if manifest.Config.Size <= 0 {
		return nil, registry.Errorf(registry.KindUnsupported, "the image config has no size in the manifest (%d)", manifest.Config.Size)
	}
	if limits.MaxConfigBytes > 0 && manifest.Config.Size > limits.MaxConfigBytes {
		return nil, registry.Errorf(registry.KindUnsupported, "the image config is %d bytes, more than the limit of %d (--max-config-bytes)",
			manifest.Config.Size, limits.MaxConfigBytes)
	}
	config, err := img.ConfigFile()
	if err != nil {
		return nil, registry.Classify(fmt.Errorf("reading the image config: %w", err))
	}
	if n := len(manifest.Layers); limits.MaxLayers > 0 && n > limits.MaxLayers {
		return nil, registry.Errorf(registry.KindUnsupported, "the image has %d layers, more than the limit of %d (--max-layers)", n, limits.MaxLayers)
	}
	if len(config.RootFS.DiffIDs) != len(manifest.Layers) {
		return nil, registry.Errorf(registry.KindUnsupported, "the config lists %d layers but the manifest %d",
			len(config.RootFS.DiffIDs), len(manifest.Layers))
	}
	var total int64
	for _, l := range manifest.Layers {
		if l.Size < 0 {
			return nil, registry.Errorf(registry.KindUnsupported, "layer %s has a negative size", l.Digest)
		}
		if !isLayerMediaType(l.MediaType) {
			return nil, registry.Errorf(registry.KindUnsupported, "layer %s has media type %q, not an image layer", l.Digest, l.MediaType)
		}
		total += l.Size
	}
	if limits.MaxCompressedBytes > 0 && total > limits.MaxCompressedBytes {
		return nil, registry.Errorf(registry.KindUnsupported, "the image's layers are %d bytes compressed, more than the limit of %d (--max-image-bytes)",
			total, limits.MaxCompressedBytes)
	}
	// Trivy finds a layer by its diff ID: two layers that claim one diff ID with different blobs
	// would leave one of them unread.
	blobOf := map[v1.Hash]v1.Hash{}
	for i, diffID := range config.RootFS.DiffIDs {
		if diffID.Algorithm != "sha256" || len(diffID.Hex) != 64 {
			return nil, registry.Errorf(registry.KindUnsupported, "the config gives layer %d the diff ID %q, not a sha256 digest", i, diffID)
		}
		if prev, ok := blobOf[diffID]; ok && prev != manifest.Layers[i].Digest {
			return nil, registry.Errorf(registry.KindUnsupported, "the config gives layers %s and %s the same diff ID %s", prev, manifest.Layers[i].Digest, diffID)
		}
		blobOf[diffID] = manifest.Layers[i].Digest
	}
	return &fetchedImage{
		Image: img, ctx: ctx, dir: dir, limits: limits,
		descs: manifest.Layers, diffs: config.RootFS.DiffIDs, got: map[int]v1.Layer{},
	}, nil
}

func isLayerMediaType(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.DockerForeignLayer, types.DockerUncompressedLayer,
		types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer,
		types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer:
		return true
	}
	return false
}

// download copies a layer blob to path, reading no more than its declared size; go-containerregistry
// checks the digest as the blob is read.
func download(ctx context.Context, img v1.Image, desc v1.Descriptor, path string) error {
	layer, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return registry.Classify(fmt.Errorf("layer %s: %w", desc.Digest, err))
	}
	rc, err := layer.Compressed()
	if err != nil {
		// go-containerregistry compares the blob's Content-Length with the manifest's size; its
		// error is not typed.
		if strings.Contains(err.Error(), "does not match expected size") {
			return registry.Errorf(registry.KindUnsupported, "layer %s: the registry serves a blob of another size than the manifest declares: %v", desc.Digest, err)
		}
		return registry.Classify(fmt.Errorf("fetching layer %s: %w", desc.Digest, err))
	}
	defer rc.Close()
	out, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	// Hashed here too, so that a blob whose bytes do not match the manifest's digest is told
	// apart from a broken download (go-containerregistry's own check fails with an untyped error).
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), &ctxReader{ctx: ctx, r: io.LimitReader(rc, desc.Size+1)})
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if ctx.Err() != nil {
			return registry.Errorf(registry.KindTimeout, "fetching layer %s: %v", desc.Digest, ctx.Err())
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); n == desc.Size && desc.Digest.Algorithm == "sha256" && got != desc.Digest.String() {
			return registry.Errorf(registry.KindUnsupported, "layer %s: the registry serves a blob of digest %s, not the manifest's", desc.Digest, got)
		}
		return registry.Classify(fmt.Errorf("fetching layer %s: %w", desc.Digest, err))
	}
	if n != desc.Size {
		return registry.Errorf(registry.KindUnsupported, "layer %s is %d bytes, the manifest says %d", desc.Digest, n, desc.Size)
	}
	return nil
}

// packageBudget adds up, over an image's layers, the packages its package files hold.
type packageBudget struct{ packages int64 }

// checkLayer reads a layer's tar stream once, before Trivy does: it must expand to no more than
// the limit, hold no more entries than the limit, no sparse file, and no path that climbs out
// of the root; each file an analyzer parses into packages must be under the package database
// limit, and the packages they hold, counted into budget, under the package limit.
func checkLayer(ctx context.Context, layer v1.Layer, digest, diffID v1.Hash, limits Limits, budget *packageBudget) error {
	oracle, err := packageFileOracle()
	if err != nil {
		return fmt.Errorf("preparing Trivy's analyzers: %w", err)
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		return registry.Errorf(registry.KindUnsupported, "layer %s cannot be decompressed: %v", digest, err)
	}
	defer rc.Close()
	// The whole stream is hashed: the layer cache keeps what is found in a layer under its diff
	// ID, so a layer must be the one its config names before its analysis may serve other images.
	hasher := sha256.New()
	lr := &limitedReader{r: io.TeeReader(rc, hasher), left: limits.MaxUncompressedBytes, limit: limits.MaxUncompressedBytes}
	tr := tar.NewReader(&ctxReader{ctx: ctx, r: lr})
	for files := 0; ; files++ {
		hdr, err := tr.Next()
		if err == nil && limits.MaxFiles > 0 && files >= limits.MaxFiles {
			return registry.Errorf(registry.KindUnsupported, "layer %s has more than %d files (--max-files)", digest, limits.MaxFiles)
		}
		if err == nil {
			if escapes(hdr.Name) || (hdr.Typeflag == tar.TypeLink && escapes(hdr.Linkname)) {
				return registry.Errorf(registry.KindUnsupported, "layer %s has an entry %q that leaves the image root", digest, hdr.Name)
			}
			if isSparse(hdr) {
				return registry.Errorf(registry.KindUnsupported, "layer %s has a sparse file %q, which is refused: its holes expand without bound", digest, hdr.Name)
			}
			name := path.Clean(strings.TrimLeft(hdr.Name, "/"))
			if limits.MaxUncompressedBytes > 0 && hdr.Size > limits.MaxUncompressedBytes {
				return registry.Errorf(registry.KindUnsupported, "layer %s has a file %q of %d bytes: the layer expands to more than %d bytes (--max-layer-bytes)",
					digest, hdr.Name, hdr.Size, limits.MaxUncompressedBytes)
			}
			// Every byte of a file's content is paid by a byte of the stream, except in a sparse
			// file (the tar reader makes its holes of nothing): one is refused a MiB in.
			content := &streamPaid{stream: lr, start: lr.read}
			if hdr.Typeflag != tar.TypeReg || !oracle.wanted(name, hdr) {
				_, err = io.Copy(content, tr)
			} else {
				// From the header, before its content is read.
				if limits.MaxPackageDBBytes > 0 && hdr.Size > limits.MaxPackageDBBytes {
					return registry.Errorf(registry.KindUnsupported, "layer %s has a package database %s of %d bytes, more than the limit of %d (--max-package-db-bytes)",
						digest, name, hdr.Size, limits.MaxPackageDBBytes)
				}
				counter := newPackageCounter(name)
				_, err = io.Copy(io.MultiWriter(content, counter), tr)
				budget.packages += counter.packages()
				if limits.MaxPackages > 0 && budget.packages > int64(limits.MaxPackages) {
					return registry.Errorf(registry.KindUnsupported, "the image's package files hold about %d packages or more (%s among them), more than the limit of %d (--max-packages)",
						budget.packages, name, limits.MaxPackages)
				}
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			// What follows the end of the archive is part of the layer too.
			if _, err := io.Copy(io.Discard, &ctxReader{ctx: ctx, r: lr}); err != nil {
				if ctx.Err() != nil {
					return registry.Errorf(registry.KindTimeout, "reading layer %s: %v", digest, ctx.Err())
				}
				if errors.Is(err, errTooLarge) {
					return registry.Errorf(registry.KindUnsupported, "layer %s expands to more than %d bytes (--max-layer-bytes)", digest, limits.MaxUncompressedBytes)
				}
				return registry.Errorf(registry.KindUnsupported, "layer %s is not a valid stream: %v", digest, err)
			}
			if got := hex.EncodeToString(hasher.Sum(nil)); got != diffID.Hex {
				return registry.Errorf(registry.KindUnsupported, "layer %s expands to content of digest sha256:%s, not the diff ID %s its config gives", digest, got, diffID)
			}
			return nil
		case err == nil:
			continue
		case ctx.Err() != nil:
			return registry.Errorf(registry.KindTimeout, "reading layer %s: %v", digest, ctx.Err())
		case errors.Is(err, errSparse):
			return registry.Errorf(registry.KindUnsupported, "layer %s has a sparse file, which is refused: its holes expand without reading the stream", digest)
		case errors.Is(err, errTooLarge):
			return registry.Errorf(registry.KindUnsupported, "layer %s expands to more than %d bytes (--max-layer-bytes)", digest, limits.MaxUncompressedBytes)
		default:
			return registry.Errorf(registry.KindUnsupported, "layer %s is not a valid tar stream: %v", digest, err)
		}
	}
}

// escapes reports whether a tar entry name climbs above the image root once cleaned, such as
// "../../etc/passwd" or "app/../../x". A leading "/" counts as the root.
func escapes(name string) bool {
	cleaned := path.Clean(strings.TrimLeft(name, "/"))
	return cleaned == ".." || strings.HasPrefix(cleaned, "../")
}

var errTooLarge = errors.New("stream exceeds its size limit")

var errSparse = errors.New("a file's content is not in the stream")

// streamPaid fails with errSparse once the content written to it is more than a MiB ahead of the
// bytes read from stream since start.
type streamPaid struct {
	stream  *limitedReader
	start   int64
	written int64
}

func (s *streamPaid) Write(p []byte) (int, error) {
	s.written += int64(len(p))
	if s.written > s.stream.read-s.start+1<<20 {
		return 0, errSparse
	}
	return len(p), nil
}

// limitedReader fails with errTooLarge once more than limit bytes were read (limit 0: no bound).
type limitedReader struct {
	r     io.Reader
	left  int64
	limit int64
	// read counts the bytes read.
	read int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.limit <= 0 {
		n, err := l.r.Read(p)
		l.read += int64(n)
		return n, err
	}
	if l.left < 0 {
		return 0, errTooLarge
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	l.read += int64(n)
	if l.left < 0 {
		return n, errTooLarge
	}
	return n, err
}

// ctxReader stops reading once ctx is done, so a hung registry or a slow layer ends with the
// scan's deadline.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
