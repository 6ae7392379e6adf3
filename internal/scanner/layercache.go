package scanner

import (
	"bytes"
	"compress/gzip"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aquasecurity/trivy/pkg/cache"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"

	"github.com/imageguard/imageguard/internal/registry"
)

// The layer cache keeps Trivy's analysis of each layer (its BlobInfo), under the key Trivy's
// image artifact gives it (cache.CalcKey of the layer's diff ID, the analyzer versions and the
// artifact options), so that an image whose layers were analysed before pulls only its config and
// its new layers. It lives in <cache-dir>/layers/<trivy-version>/, one file per layer; the files
// are read and written by the analyses (in this process or in worker processes), and their
// bytes are bounded by the LayerCache of the controller process, which evicts the least recently
// used.
//
// An entry serves an image only when its content hashes to the digest kept with it (a corrupt
// or truncated file is removed and the layer analysed again) and the layer it describes is the
// layer at that position of the image's config (its diff ID), so no image is ever given the
// packages of a layer it does not have.

// layerFileMagic starts every entry: the format; then the SHA-256 of what follows: the length of
// the metadata (4 bytes, big-endian), the metadata (JSON: layerMeta), the analysis (gzipped JSON:
// Trivy's BlobInfo).
const layerFileMagic = "imageguard-layer-v2\n"

// layerLockStripes is the number of lock files over which layer keys are spread: an analysis
// about to analyse a layer holds its stripe, so that another analysis needing the same layer
// waits for its result instead of pulling it too.
const layerLockStripes = 256

// maxLayerEntry bounds one entry on disk, whatever the cache's bound.
const maxLayerEntry = 16 << 20

// maxLayerEntryJSON bounds what a cache entry may expand to when read.
const maxLayerEntryJSON = 256 << 20

var layerKeyPattern = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)

// LayerCacheStats are the layer cache's counters since the process started, and its size now.
type LayerCacheStats struct {
	// Hits and Misses count layers found in the cache and layers analysed.
	Hits, Misses int64
	// Corrupt counts entries that failed their check and were removed.
	Corrupt int64
	// Evictions counts entries removed to stay under the bound.
	Evictions int64
	// Entries and Bytes are what the cache holds now; MaxBytes is its bound.
	Entries, Bytes, MaxBytes int64
}

// LayerCache bounds the layer cache's folder to MaxBytes, evicting the least recently used
// entries. It learns of the entries analyses read and write from their LayerUse.
type LayerCache struct {
	dir      string
	maxBytes int64

	mu      sync.Mutex
	lru     *list.List // of *lruEntry; front: most recently used
	entries map[string]*list.Element
	bytes   int64

	hits, misses, corrupt, evictions atomic.Int64
}

type lruEntry struct {
	key  string
	size int64
}

// LayerUse is what one analysis did with the layer cache: the entries it read, and those it
// wrote with their sizes.
type LayerUse struct {
	Hits    []string         `json:"hits,omitempty"`
	Puts    map[string]int64 `json:"puts,omitempty"`
	Corrupt int              `json:"corrupt,omitempty"`
}

// OpenLayerCache opens the layer cache of trivyVersion under cacheDir, bounded by maxBytes (which
// must be positive). The folders of other Trivy versions are removed (their keys can never match
// again), and so are files a crash left half written; what remains is indexed by modification
// time, which every read refreshes, so the eviction order survives a restart.
func OpenLayerCache(cacheDir, trivyVersion string, maxBytes int64) (*LayerCache, error) {
	if maxBytes <= 0 {
		return nil, errors.New("scanner: the layer cache needs a positive bound")
	}
	root := filepath.Join(cacheDir, "layers")
	dir := filepath.Join(root, sanitize(trivyVersion))
	if err := os.MkdirAll(filepath.Join(dir, "locks"), 0o750); err != nil {
		return nil, fmt.Errorf("creating the layer cache: %w", err)
	}
	others, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("reading the layer cache: %w", err)
	}
	for _, e := range others {
		if e.Name() != filepath.Base(dir) {
			if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
				return nil, fmt.Errorf("removing the layer cache of another Trivy version: %w", err)
			}
		}
	}
	c := &LayerCache{dir: dir, maxBytes: maxBytes}
	if err := c.scan(true); err != nil {
		return nil, err
	}
	return c, nil
}

// Dir is the folder analyses read and write entries in.
func (c *LayerCache) Dir() string { return c.dir }

// MaxBytes is the cache's bound.
func (c *LayerCache) MaxBytes() int64 { return c.maxBytes }

// rescan indexes the folder anew: after a start, or after an analysis that ended without saying
// what it wrote (a worker that was killed).
func (c *LayerCache) rescan() error { return c.scan(false) }

// scan indexes the folder; at open, it also removes the files a crash left half written (later,
// they may be another analysis's, about to be renamed into place).
func (c *LayerCache) scan(opening bool) error {
	files, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("reading the layer cache: %w", err)
	}
	type found struct {
		key   string
		size  int64
		mtime time.Time
	}
	var all []found
	for _, f := range files {
		name := f.Name()
		if f.IsDir() {
			continue
		}
		hexKey, ok := strings.CutSuffix(name, ".layer")
		if !ok || !layerKeyPattern.MatchString("sha256:"+hexKey) {
			// Half-written entries (a crash) and anything else not ours.
			if opening {
				_ = os.Remove(filepath.Join(c.dir, name))
			}
			continue
		}
		info, err := f.Info()
		if err != nil {
			continue
		}
		all = append(all, found{key: "sha256:" + hexKey, size: info.Size(), mtime: info.ModTime()})
	}
	slices.SortFunc(all, func(a, b found) int { return b.mtime.Compare(a.mtime) })
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru, c.entries, c.bytes = list.New(), map[string]*list.Element{}, 0
	for _, f := range all {
		c.entries[f.key] = c.lru.PushBack(&lruEntry{key: f.key, size: f.size})
		c.bytes += f.size
	}
	c.evictLocked()
	return nil
}

// Record takes in what an analysis read and wrote, then evicts down to the bound. A nil use
// (an analysis that ended without an answer) rescans the folder.
func (c *LayerCache) Record(use *LayerUse) {
	if use == nil {
		_ = c.rescan()
		return
	}
	c.hits.Add(int64(len(use.Hits)))
	c.misses.Add(int64(len(use.Puts)))
	c.corrupt.Add(int64(max(use.Corrupt, 0)))
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, key := range use.Hits {
		if el, ok := c.entries[key]; ok {
			c.lru.MoveToFront(el)
		}
	}
	for key := range use.Puts {
		if !layerKeyPattern.MatchString(key) {
			continue
		}
		// The size on disk, not the one reported: a worker's word is not trusted for the bound.
		info, err := os.Stat(layerPath(c.dir, key))
		if err != nil {
			continue
		}
		size := info.Size()
		if el, ok := c.entries[key]; ok {
			e := el.Value.(*lruEntry)
			c.bytes += size - e.size
			e.size = size
			c.lru.MoveToFront(el)
			continue
		}
		c.entries[key] = c.lru.PushFront(&lruEntry{key: key, size: size})
		c.bytes += size
	}
	c.evictLocked()
}

// evictLocked removes least recently used entries until the cache is under its bound.
func (c *LayerCache) evictLocked() {
	for c.bytes > c.maxBytes {
		el := c.lru.Back()
		if el == nil {
			return
		}
		e := el.Value.(*lruEntry)
		// An analysis that has it open still reads it whole; one that has not yet analyses the
		// layer again.
		if err := os.Remove(layerPath(c.dir, e.key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			// Still on disk: still counted. The next eviction tries again.
			return
		}
		c.lru.Remove(el)
		delete(c.entries, e.key)
		c.bytes -= e.size
		c.evictions.Add(1)
	}
}

// Stats returns the cache's counters and size.
func (c *LayerCache) Stats() LayerCacheStats {
	c.mu.Lock()
	entries, size := int64(len(c.entries)), c.bytes
	c.mu.Unlock()
	return LayerCacheStats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), Corrupt: c.corrupt.Load(), Evictions: c.evictions.Load(),
		Entries: entries, Bytes: size, MaxBytes: c.maxBytes,
	}
}

func layerPath(dir, key string) string {
	return filepath.Join(dir, strings.TrimPrefix(key, "sha256:")+".layer")
}

// layerView is the cache.Cache one analysis gives Trivy's image artifact: layers found in the
// folder, checked, and held in memory for the rest of the analysis (an eviction meanwhile takes
// nothing from it); layers analysed, written to the folder for the next image. The artifact
// (image config) information is kept in memory only: the config is read anyway.
type layerView struct {
	dir  string
	opts layerViewOptions
	// diffIDs and digests are the image's layers in order (its config's diff IDs, its manifest's
	// blob digests): Trivy's layer keys come in the same order, so each key is checked against
	// the layer it must describe.
	diffIDs, digests []string
	mem              cache.Cache
	locks            *stripeLocks

	mu  sync.Mutex
	use LayerUse
	// pending counts, per stripe held, the missing layers of it not yet written.
	pending map[int]int
	// expected maps each of the image's layer keys to its position, once MissingBlobs saw them.
	expected map[string]int
	// written counts the bytes of the entries written, against WriteBudget.
	written int64
}

// layerViewOptions bound what one analysis reads from and writes to the layer cache.
type layerViewOptions struct {
	// MaxEntry bounds one entry, read or written.
	MaxEntry int64
	// WriteBudget bounds the bytes one analysis writes.
	WriteBudget int64
	// Spend counts the packages of an entry about to be read into the analysis's package budget
	// (the one its downloaded layers count into), and fails past --max-packages.
	Spend func(packages int64) error
	// Now stamps the entries written (the analysis's start, by the scanner's clock).
	Now time.Time
	// AnalyzedAfter: entries made before it are not used (a re-analysis asked for a fresh pull).
	AnalyzedAfter time.Time
	// Verified says whether this analysis downloaded the layer of diffID and found its content to
	// hash to it, and its blob digest: only such layers are written.
	Verified func(diffID string) (digest string, ok bool)
}

// layerWaitLimit bounds how long an analysis waits for another one's analysis of a layer it
// needs; past it, it analyses the layer itself.
const layerWaitLimit = 30 * time.Second

func newLayerView(dir string, opts layerViewOptions, diffIDs, digests []string) *layerView {
	return &layerView{
		dir: dir, opts: opts, diffIDs: diffIDs, digests: digests, mem: cache.NewMemoryCache(),
		locks: newStripeLocks(filepath.Join(dir, "locks")), use: LayerUse{Puts: map[string]int64{}},
		pending: map[int]int{},
	}
}

// MissingBlobs finds in the folder the layers Trivy asks about. For each layer not found, the
// view takes its lock stripe before saying it is missing: an analysis that holds the stripe is
// analysing that layer (or another of the stripe), and the view waits for it (layerWaitLimit at
// most) and looks again, so two analyses sharing a layer at once pull it once. A view takes all
// its stripes at once or none, and holds none while it waits, so no two views wait on each other.
func (v *layerView) MissingBlobs(ctx context.Context, artifactID string, blobIDs []string) (bool, []string, error) {
	// Keys that are not those of this view's image (another number of them, one key for two
	// layers): nothing from the folder.
	uncached := func() (bool, []string, error) {
		v.expected = nil
		_, missing, err := v.mem.MissingBlobs(ctx, artifactID, blobIDs)
		return true, missing, err
	}
	if len(blobIDs) != len(v.diffIDs) || len(v.digests) != len(v.diffIDs) {
		return uncached()
	}
	v.expected = make(map[string]int, len(blobIDs))
	for i, key := range blobIDs {
		if prev, ok := v.expected[key]; ok && v.diffIDs[prev] != v.diffIDs[i] {
			return uncached()
		}
		v.expected[key] = i
	}
	wctx, cancel := context.WithTimeout(ctx, layerWaitLimit)
	defer cancel()
	for {
		missing, err := v.load(ctx, blobIDs)
		if err != nil || len(missing) == 0 {
			return true, nil, err
		}
		busy, err := v.locks.tryLockAll(stripesOf(missing))
		if err != nil {
			// No locks (a read-only folder): analyse what is missing, without waiting for others.
			return true, missing, nil //nolint:nilerr // the cache is an optimisation
		}
		if busy < 0 {
			// Another analysis may have written some between the look and the lock.
			missing, err = v.load(ctx, missing)
			v.mu.Lock()
			for _, key := range missing {
				v.pending[stripeOf(key)]++
			}
			for _, s := range stripesOf(blobIDs) {
				if v.pending[s] == 0 {
					v.locks.unlock(s)
				}
			}
			v.mu.Unlock()
			return true, missing, err
		}
		if err := v.locks.waitFree(wctx, busy); err != nil {
			// Waited long enough (or the analysis ends): analyse them without the locks.
			return true, missing, nil //nolint:nilerr // the deadline ends the analysis soon enough
		}
	}
}

// load reads from the folder the entries of keys that are good, and returns the keys still
// missing. It fails when the entries read hold more packages than the analysis may.
func (v *layerView) load(ctx context.Context, keys []string) ([]string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var missing []string
	for _, key := range keys {
		if _, err := v.mem.GetBlob(ctx, key); err == nil {
			continue
		}
		i, ok := v.expected[key]
		if !ok {
			missing = append(missing, key)
			continue
		}
		entry, err := readLayerEntry(v.dir, key, v.opts.MaxEntry, func(meta layerMeta) error {
			// Checked before the analysis it holds is decoded.
			if meta.DiffID != v.diffIDs[i] || meta.Digest != v.digests[i] {
				return fmt.Errorf("%w: describes layer %s (blob %s), not %s (blob %s)", errCorruptEntry,
					meta.DiffID, meta.Digest, v.diffIDs[i], v.digests[i])
			}
			if !v.opts.AnalyzedAfter.IsZero() && !time.Unix(meta.AnalyzedAt, 0).After(v.opts.AnalyzedAfter) {
				// Older than a re-analysis wants: the layer is pulled again.
				return errStaleEntry
			}
			if v.opts.Spend != nil {
				return v.opts.Spend(max(meta.Packages, 0))
			}
			return nil
		})
		if err == nil && entry.info.DiffID != v.diffIDs[i] {
			err = fmt.Errorf("%w: holds the analysis of layer %s, not %s", errCorruptEntry, entry.info.DiffID, v.diffIDs[i])
		}
		switch {
		case err == nil:
			_ = v.mem.PutBlob(ctx, key, entry.info)
			v.use.Hits = append(v.use.Hits, key)
			now := time.Now()
			_ = os.Chtimes(layerPath(v.dir, key), now, now)
		case errors.Is(err, errStaleEntry):
			missing = append(missing, key)
		case errors.Is(err, errCorruptEntry):
			v.use.Corrupt++
			_ = os.Remove(layerPath(v.dir, key))
			missing = append(missing, key)
		case errors.As(err, new(*registry.Error)):
			// Past the package budget: the analysis ends.
			return nil, err
		default:
			missing = append(missing, key)
		}
	}
	return missing, nil
}

// PutArtifact keeps the image config's analysis for this analysis only.
func (v *layerView) PutArtifact(ctx context.Context, artifactID string, info ftypes.ArtifactInfo) error {
	return v.mem.PutArtifact(ctx, artifactID, info)
}

// PutBlob keeps a layer's analysis, and writes it to the folder when it describes the layer its
// key was asked for, and this analysis downloaded that layer and checked that its content hashes
// to its diff ID.
func (v *layerView) PutBlob(ctx context.Context, key string, info ftypes.BlobInfo) error {
	if err := v.mem.PutBlob(ctx, key, info); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if i, ok := v.expected[key]; ok && v.diffIDs[i] == info.DiffID && layerKeyPattern.MatchString(key) && v.opts.Verified != nil {
		if digest, verified := v.opts.Verified(info.DiffID); verified && digest == v.digests[i] {
			stamp := v.opts.Now
			if stamp.IsZero() {
				stamp = time.Now()
			}
			meta := layerMeta{DiffID: info.DiffID, Digest: digest, Packages: countPackages(info), AnalyzedAt: stamp.Unix()}
			maxEntry := v.opts.MaxEntry
			if budget := v.opts.WriteBudget; budget > 0 {
				maxEntry = min(maxEntry, budget-v.written)
			}
			if maxEntry > 0 {
				if size, err := writeLayerEntry(v.dir, key, meta, info, maxEntry); err == nil {
					v.use.Puts[key] = size
					v.written += size
				}
			}
		}
	}
	if s := stripeOf(key); v.pending[s] > 0 {
		v.pending[s]--
		if v.pending[s] == 0 {
			v.locks.unlock(s)
		}
	}
	return nil
}

func (v *layerView) DeleteBlobs(ctx context.Context, keys []string) error {
	return v.mem.DeleteBlobs(ctx, keys)
}

func (v *layerView) GetArtifact(ctx context.Context, id string) (ftypes.ArtifactInfo, error) {
	return v.mem.GetArtifact(ctx, id)
}

func (v *layerView) GetBlob(ctx context.Context, key string) (ftypes.BlobInfo, error) {
	return v.mem.GetBlob(ctx, key)
}

// Close releases the stripes the analysis still holds (layers it did not finish).
func (v *layerView) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.locks.unlockAll()
	clear(v.pending)
	return nil
}

// Use returns what the analysis did with the cache.
func (v *layerView) Use() *LayerUse {
	v.mu.Lock()
	defer v.mu.Unlock()
	return &LayerUse{Hits: slices.Clone(v.use.Hits), Puts: maps.Clone(v.use.Puts), Corrupt: v.use.Corrupt}
}

func (v *layerView) Clear(ctx context.Context) error { return v.mem.Clear(ctx) }

// countPackages is the number of OS and language packages a layer's analysis found.
func countPackages(info ftypes.BlobInfo) int64 {
	var n int64
	for _, p := range info.PackageInfos {
		n += int64(len(p.Packages))
	}
	for _, a := range info.Applications {
		n += int64(len(a.Packages))
	}
	return n
}

var (
	errCorruptEntry = errors.New("corrupt layer cache entry")
	errStaleEntry   = errors.New("layer cache entry older than asked for")
)

// layerMeta is what an entry says of itself, ahead of the analysis it holds.
type layerMeta struct {
	// DiffID and Digest name the layer: its content's digest (checked when it was analysed)
	// and its blob's.
	DiffID string `json:"diffID"`
	Digest string `json:"digest"`
	// Packages is the number of packages the analysis holds, read before it is decoded.
	Packages int64 `json:"packages"`
	// AnalyzedAt is when the layer was pulled and analysed (Unix seconds).
	AnalyzedAt int64 `json:"analyzedAt"`
}

// maxLayerMeta bounds an entry's metadata.
const maxLayerMeta = 4 << 10

type layerEntry struct {
	meta layerMeta
	info ftypes.BlobInfo
}

// readLayerEntry reads and checks the entry of key: a regular file of at most maxEntry bytes
// whose content hashes to the digest it starts with, and whose analysis holds the packages its
// metadata says; admit, when set, judges the metadata before the analysis is decoded, and its
// error is returned. A missing entry is fs.ErrNotExist; one that fails a check is errCorruptEntry.
func readLayerEntry(dir, key string, maxEntry int64, admit func(layerMeta) error) (layerEntry, error) {
	if !layerKeyPattern.MatchString(key) {
		return layerEntry{}, fs.ErrNotExist
	}
	f, err := os.OpenFile(layerPath(dir, key), os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return layerEntry{}, fmt.Errorf("%w: a symbolic link", errCorruptEntry)
		}
		return layerEntry{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return layerEntry{}, err
	}
	if !st.Mode().IsRegular() || (maxEntry > 0 && st.Size() > maxEntry) {
		return layerEntry{}, fmt.Errorf("%w: not a regular file of at most %d bytes (%s, %d bytes)", errCorruptEntry, maxEntry, st.Mode().Type(), st.Size())
	}
	raw, err := io.ReadAll(io.LimitReader(f, st.Size()+1))
	if err != nil {
		return layerEntry{}, err
	}
	rest, ok := bytes.CutPrefix(raw, []byte(layerFileMagic))
	if !ok || len(rest) < sha256.Size+4 {
		return layerEntry{}, fmt.Errorf("%w: no header", errCorruptEntry)
	}
	sum, body := rest[:sha256.Size], rest[sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return layerEntry{}, fmt.Errorf("%w: content digest %s, %s kept", errCorruptEntry, hex.EncodeToString(got[:]), hex.EncodeToString(sum))
	}
	metaLen := int(binary.BigEndian.Uint32(body[:4]))
	if metaLen > maxLayerMeta || len(body) < 4+metaLen {
		return layerEntry{}, fmt.Errorf("%w: metadata of %d bytes", errCorruptEntry, metaLen)
	}
	var e layerEntry
	if err := json.Unmarshal(body[4:4+metaLen], &e.meta); err != nil {
		return layerEntry{}, fmt.Errorf("%w: metadata: %v", errCorruptEntry, err)
	}
	if admit != nil {
		if err := admit(e.meta); err != nil {
			return layerEntry{}, err
		}
	}
	zr, err := gzip.NewReader(bytes.NewReader(body[4+metaLen:]))
	if err != nil {
		return layerEntry{}, fmt.Errorf("%w: %v", errCorruptEntry, err)
	}
	if err := json.NewDecoder(io.LimitReader(zr, maxLayerEntryJSON)).Decode(&e.info); err != nil {
		return layerEntry{}, fmt.Errorf("%w: %v", errCorruptEntry, err)
	}
	if e.info.SchemaVersion != ftypes.BlobJSONSchemaVersion {
		return layerEntry{}, fmt.Errorf("%w: schema %d", errCorruptEntry, e.info.SchemaVersion)
	}
	if n := countPackages(e.info); n != e.meta.Packages {
		return layerEntry{}, fmt.Errorf("%w: %d packages, its metadata says %d", errCorruptEntry, n, e.meta.Packages)
	}
	return e, nil
}

// writeLayerEntry writes info as the entry of key (a temporary file renamed into place: a reader
// sees the old entry or the new) and returns its size. An entry larger than maxEntry is not
// written. The file is not synced: after a power cut, a torn entry fails its digest check.
func writeLayerEntry(dir, key string, meta layerMeta, info ftypes.BlobInfo, maxEntry int64) (int64, error) {
	rawMeta, err := json.Marshal(meta)
	if err != nil {
		return 0, err
	}
	var body bytes.Buffer
	body.Write(binary.BigEndian.AppendUint32(nil, uint32(len(rawMeta))))
	body.Write(rawMeta)
	zw, _ := gzip.NewWriterLevel(&boundedWriter{w: &body, max: maxEntry}, gzip.BestSpeed)
	if err := json.NewEncoder(zw).Encode(info); err != nil {
		return 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	sum := sha256.Sum256(body.Bytes())
	size := int64(len(layerFileMagic) + len(sum) + body.Len())
	if maxEntry > 0 && size > maxEntry {
		return 0, errTooLarge
	}
	tmp, err := os.CreateTemp(dir, "tmp-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(layerFileMagic)
	if err == nil {
		_, err = tmp.Write(sum[:])
	}
	if err == nil {
		_, err = tmp.Write(body.Bytes())
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), layerPath(dir, key)); err != nil {
		return 0, err
	}
	return size, nil
}

// stripeOf is the lock stripe of a layer key.
func stripeOf(key string) int {
	hexKey := strings.TrimPrefix(key, "sha256:")
	if len(hexKey) < 2 {
		return 0
	}
	b, err := hex.DecodeString(hexKey[:2])
	if err != nil {
		return 0
	}
	return int(b[0]) % layerLockStripes
}

func stripesOf(keys []string) []int {
	var out []int
	for _, k := range keys {
		out = append(out, stripeOf(k))
	}
	slices.Sort(out)
	return slices.Compact(out)
}
