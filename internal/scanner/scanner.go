// Package scanner analyses images with Trivy, used as a library, keeps each digest's package
// inventory on disk, and matches inventories against the vulnerability DB with Trivy's own
// detection. It knows nothing of controller-runtime.
package scanner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"k8s.io/utils/clock"

	trivylog "github.com/aquasecurity/trivy/pkg/log"

	specs "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/imageguard/imageguard/internal/platform"
	"github.com/imageguard/imageguard/internal/registry"
)

// Options configure a Scanner.
type Options struct {
	// CacheDir holds the kept inventories (under inventory/<trivy-version>/).
	CacheDir string
	// TempDir holds layers during an analysis; empty means <CacheDir>/tmp, so that a read-only
	// root filesystem needs only the cache volume.
	TempDir string
	// Timeout bounds one analysis, from the first registry request to the merged inventory.
	Timeout time.Duration
	// Limits bound what an analysis pulls and expands.
	Limits Limits
	// Worker, when set, runs each analysis in a child process whose memory is bounded.
	Worker *WorkerOptions
	// Concurrency bounds the analyses running at once (the controller's --scan-concurrency); 0
	// means 2.
	Concurrency int
	// CrashRetryAfter is how long a digest whose analyses took the process down CrashLimit times
	// is refused (AnalysisCrashed) before one more try; 0 means 24 hours.
	CrashRetryAfter time.Duration
	// Clock stamps analyses (Inventory.AnalyzedAt); nil is the real clock.
	Clock clock.PassiveClock
	// LayerCacheMaxBytes bounds the layer cache (<CacheDir>/layers/): Trivy's analysis of each
	// layer, kept so that an image whose layers were seen before pulls only its new ones. 0
	// keeps no layer cache.
	LayerCacheMaxBytes int64
	// JavaDB, when set, is the Java DB the jar analyzer reads; an image with Java archives
	// analysed before one was loaded is analysed again once it is. nil: jar files are only
	// counted (Inventory.JavaArchives).
	JavaDB JavaDB
}

// Scanner analyses each digest once and matches kept inventories against the DB.
type Scanner struct {
	opts         Options
	registry     *registry.Client
	store        *Store
	db           DB
	matcher      *matcher
	trivyVersion string
	flights      singleflight.Group
	// imageFlights share the analysis of one image manifest between flights (above).
	imageFlights singleflight.Group
	marks        *crashMarks
	analyses     atomic.Int64
	// layers bounds the layer cache; layerDir is where analyses find it (both unset without one).
	layers   *LayerCache
	layerDir layerCacheDir

	// Of re-analyses (Reanalyse): the digests being analysed again, and until when a digest
	// whose re-analysis failed is not tried again.
	reMu       sync.Mutex
	reRunning  map[string]bool
	reFailedAt map[string]time.Time
}

// New returns a Scanner that reaches registries through client and matches against db.
func New(opts Options, client *registry.Client, db DB) (*Scanner, error) {
	if opts.CacheDir == "" {
		return nil, errors.New("scanner: a cache folder is required")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Minute
	}
	opts.Limits = opts.Limits.withDefaults()
	quietTrivyLogs()
	if opts.TempDir == "" {
		opts.TempDir = filepath.Join(opts.CacheDir, "tmp")
	}
	// Leftovers of analyses a crash interrupted.
	if err := os.RemoveAll(opts.TempDir); err != nil {
		return nil, fmt.Errorf("scanner: cleaning %s: %w", opts.TempDir, err)
	}
	if err := os.MkdirAll(opts.TempDir, 0o750); err != nil {
		return nil, fmt.Errorf("scanner: %w", err)
	}
	version := TrivyVersion()
	store, err := NewStore(opts.CacheDir, version)
	if err != nil {
		return nil, err
	}
	store.MaxBytes = opts.Limits.MaxInventoryBytes
	if opts.Concurrency <= 0 {
		opts.Concurrency = 2
	}
	if opts.CrashRetryAfter <= 0 {
		opts.CrashRetryAfter = 24 * time.Hour
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	marks, err := newCrashMarks(opts.CacheDir, opts.CrashRetryAfter, opts.Concurrency)
	if err != nil {
		return nil, err
	}
	// A minute past its deadline, an analysis that has not ended is stuck.
	marks.stuckAfter = opts.Timeout + time.Minute
	s := &Scanner{
		opts: opts, registry: client, store: store, db: db, marks: marks,
		matcher: newMatcher(), trivyVersion: version,
	}
	if opts.LayerCacheMaxBytes > 0 {
		if s.layers, err = OpenLayerCache(opts.CacheDir, version, opts.LayerCacheMaxBytes); err != nil {
			return nil, err
		}
		// One entry may take an eighth of the cache (16 MiB at most), and one analysis write a
		// quarter of it, so that one image's layers never push out all the others.
		s.layerDir = layerCacheDir{dir: s.layers.Dir(),
			maxEntry:    max(min(opts.LayerCacheMaxBytes/8, maxLayerEntry), 1),
			writeBudget: max(opts.LayerCacheMaxBytes/4, 1)}
	} else if err := os.RemoveAll(filepath.Join(opts.CacheDir, "layers")); err != nil {
		return nil, fmt.Errorf("scanner: removing the layer cache: %w", err)
	}
	return s, nil
}

// LayerCacheStats returns the layer cache's counters and size, and false without a layer cache.
func (s *Scanner) LayerCacheStats() (LayerCacheStats, bool) {
	if s.layers == nil {
		return LayerCacheStats{}, false
	}
	return s.layers.Stats(), true
}

var quietOnce sync.Once

// quietTrivyLogs replaces the log handler Trivy installs at init, which keeps every record, at
// every level, in a slice for ever (and is not safe for concurrent use), with one that prints
// its warnings and errors.
func quietTrivyLogs() {
	quietOnce.Do(func() {
		slog.SetDefault(trivylog.New(trivylog.NewHandler(os.Stderr, &trivylog.Options{Level: slog.LevelWarn})))
	})
}

// TrivyVersion returns the version of the Trivy library linked in, from the build info.
func TrivyVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/aquasecurity/trivy" {
				if dep.Replace != nil {
					return dep.Replace.Version
				}
				return dep.Version
			}
		}
	}
	return "unknown"
}

// Version returns the version of the Trivy library, for reports.
func (s *Scanner) Version() string { return s.trivyVersion }

// Analyses returns how many analyses (image pulls) this Scanner performed.
func (s *Scanner) Analyses() int64 { return s.analyses.Load() }

// Analysed reports whether the inventory that serves digest on platform is kept, so that matching
// it needs no analysis (see ImageRef.Platform).
func (s *Scanner) Analysed(digest, platform string) bool {
	inv, err := s.kept(ImageRef{Digest: digest, Platform: platform})
	return err == nil && inv != nil
}

// kept returns the kept inventory that serves ref without a registry request: ref.Digest's own
// when it is an image manifest (one image whatever the platform), else that of the image its index
// names for ref's platform, once an analysis has told which; nil when there is none. An inventory
// kept before platforms were recorded is not used: its digest may be an index analysed for
// another platform.
func (s *Scanner) kept(ref ImageRef) (*Inventory, error) {
	inv, err := s.store.Get(ref.Digest)
	if err != nil || (inv != nil && inv.Platform != "") {
		return inv, err
	}
	platform, err := s.platformOf(ref)
	if err != nil {
		return nil, err
	}
	image, err := s.store.Alias(ref.Digest, platform)
	if err != nil || image == "" {
		return nil, err
	}
	return s.store.Get(image)
}

// platformOf returns ref's platform, the registry client's when it names none.
func (s *Scanner) platformOf(ref ImageRef) (v1.Platform, error) {
	if ref.Platform == "" {
		return s.registry.Platform(), nil
	}
	return ParsePlatform(ref.Platform)
}

// ParsePlatform parses os/architecture[/variant], as spec.platform and --platform give it.
func ParsePlatform(s string) (v1.Platform, error) {
	p, err := v1.ParsePlatform(s)
	if err != nil || p.OS == "" || p.Architecture == "" || strings.Contains(s, ":") {
		return v1.Platform{}, registry.Errorf(registry.KindUnsupported, "malformed platform %q: want os/architecture[/variant], e.g. linux/arm64", s)
	}
	return *p, nil
}

// Inventory returns ref's inventory: the kept one when there is one, otherwise from a new
// analysis, which concurrent callers for the same digest and platform share. The bool says
// whether an analysis ran for this call. For an index digest the inventory is that of its image
// for ref's platform, kept under that image's digest (Inventory.Digest).
func (s *Scanner) Inventory(ctx context.Context, ref ImageRef) (*Inventory, bool, error) {
	if inv, err := s.kept(ref); err != nil || s.serves(inv, ref) {
		return inv, false, err
	}
	if err := ctx.Err(); err != nil {
		return nil, false, registry.Errorf(registry.KindTimeout, "not analysing %s: %v", ref, err)
	}
	platform, err := s.platformOf(ref)
	if err != nil {
		return nil, false, err
	}
	for tries := 0; ; tries++ {
		inv, shared, err := s.flight(ctx, ref, platform)
		// A flight joined under an older freshness than ref asks for returns what is kept: one
		// more, then fresh enough.
		if err != nil || !shared || servesRef(inv, ref) || tries == 1 {
			return inv, !shared && err == nil, err
		}
	}
}

// flight runs, or joins, the analysis of ref for platform.
func (s *Scanner) flight(ctx context.Context, ref ImageRef, platform v1.Platform) (*Inventory, bool, error) {
	ch := s.flights.DoChan(flightKey(ref, ref.Digest, platform.String()), func() (_ any, err error) {
		// Another flight may have just finished and kept it: no analysis for this one.
		if inv, err := s.kept(ref); err != nil || s.serves(inv, ref) {
			if err != nil {
				return nil, err
			}
			return flightResult{inv, true}, nil
		}
		started := s.opts.Clock.Now()
		// The flight is shared: one caller giving up must not cancel it for the others. The
		// image the digest names for the platform is a registry request, within the time limit
		// (which also bounds img's own requests in an in-process analysis).
		wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.Timeout)
		defer wcancel()
		img, imageRef, err := s.resolve(wctx, ref, platform)
		if err != nil {
			return nil, err
		}
		// One image may be asked for under several flights at once (its own digest and an
		// index's, or a single-platform image for nodes of two platforms): they share its
		// analysis, which is bounded on its own (its wait for a slot, then its time limit).
		inv, err, shared := s.imageFlights.Do(flightKey(imageRef, imageRef.Digest, ""), func() (any, error) {
			return s.analyseImage(ctx, ref, imageRef, img, started)
		})
		if err != nil {
			return nil, err
		}
		return flightResult{inv.(*Inventory), shared}, nil
	})
	select {
	case <-ctx.Done():
		return nil, false, registry.Errorf(registry.KindTimeout, "waiting for the analysis of %s: %v", ref, ctx.Err())
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Shared, res.Err
		}
		r := res.Val.(flightResult)
		return r.inv, res.Shared || r.shared, nil
	}
}

// flightResult is what a flight returns: the inventory, and whether it came from another
// flight's analysis (or was kept already) rather than this one's.
type flightResult struct {
	inv    *Inventory
	shared bool
}

// flightKey keys the analyses callers share: the same repository (another registry serving the
// same digest may fail, or be slow, on purpose; its failure must not be another's), digest and
// platform.
func flightKey(ref ImageRef, digest, platform string) string {
	return ref.Repository + "@" + digest + " " + platform
}

// analyseImage analyses imageRef, the image ref names for its platform (img), and keeps its
// inventory; ref is what was asked for, for errors. It runs once per image at a time (the
// imageFlights), so it first serves what is kept: an index's image may be kept already (another
// index, another platform's node with the same image, a pod naming the image's own digest), or
// an analysis that just ended kept it.
func (s *Scanner) analyseImage(ctx context.Context, ref, imageRef ImageRef, img v1.Image, started time.Time) (_ any, err error) {
	if inv, err := s.store.Get(imageRef.Digest); err != nil || (s.serves(inv, imageRef) && inv.Platform != "") {
		return inv, err
	}
	// Its wait for a slot is bounded on its own, and its time limit starts once it has one.
	wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.Timeout)
	defer wcancel()
	// Marked in the cache first, so that if it takes the process down the next start knows.
	end, err := s.marks.begin(wctx, imageRef.Digest)
	if err != nil {
		return nil, err
	}
	defer end()
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.Timeout)
	defer cancel()
	// A panic in our part of the analysis ends it, not the process (singleflight would
	// re-raise it where nothing recovers); one in Trivy's own goroutines is what the marks
	// are for.
	defer func() {
		if p := recover(); p != nil {
			err = registry.Errorf(registry.KindUnsupported, "the analysis of %s failed: %v", ref, p)
		}
	}()
	s.analyses.Add(1)
	var inv *Inventory
	var use *LayerUse
	if s.layers != nil {
		// nil (a worker that ended without an answer, a panic): the folder is read again.
		defer func() { s.layers.Record(use) }()
	}
	analyse := func(javaDir string) error {
		if s.opts.Worker != nil {
			inv, use, err = s.analyzeInWorker(actx, imageRef, javaDir)
		} else {
			inv, use, err = s.analyze(actx, imageRef, img, javaDir)
		}
		return err
	}
	if s.opts.JavaDB != nil {
		// The Java DB is not swapped while the jar analyzer reads it.
		err = s.opts.JavaDB.ViewDir(analyse)
	} else {
		err = analyse("")
	}
	if err != nil {
		return nil, err
	}
	if inv.JavaArchives > 0 && s.opts.JavaDB != nil {
		s.opts.JavaDB.Want()
	}
	inv.AnalyzedAt = started.UTC().Truncate(time.Second)
	if err := s.store.Put(inv); err != nil {
		return nil, fmt.Errorf("keeping the inventory of %s: %w", imageRef.Digest, err)
	}
	return inv, nil
}

// resolve returns the image ref's digest names for platform (of an index, the image a node of
// that platform runs, as containerd chooses it: see internal/platform) and a ref to that image's
// own digest, keeping which image an index names, and the platforms it has images for, so that
// matching it again needs no registry request.
func (s *Scanner) resolve(ctx context.Context, ref ImageRef, platform v1.Platform) (v1.Image, ImageRef, error) {
	digestRef, opts, err := s.digestRef(ctx, ref)
	if err != nil {
		return nil, ref, err
	}
	desc, err := remote.Get(digestRef, opts...)
	if err != nil {
		return nil, ref, s.scanError(ctx, fmt.Errorf("fetching %s: %w", ref, err))
	}
	var img v1.Image
	if desc.MediaType.IsIndex() {
		images, known, err := s.indexImages(ctx, digestRef, desc.Manifest, opts)
		if err != nil {
			return nil, ref, err
		}
		if err := s.keepIndexPlatforms(ref.Digest, images, known); err != nil {
			return nil, ref, fmt.Errorf("keeping the platforms of %s: %w", ref, err)
		}
		child, err := s.runtimeChoice(ctx, digestRef, desc.Manifest, platform, opts)
		if err != nil {
			return nil, ref, err
		}
		img, err = remote.Image(digestRef.Context().Digest(child.String()), opts...)
		if err != nil {
			return nil, ref, s.scanError(ctx, fmt.Errorf("fetching the image of %s for %s: %w", ref, platform.String(), err))
		}
	} else if img, err = desc.Image(); err != nil {
		return nil, ref, s.scanError(ctx, fmt.Errorf("fetching %s: %w", ref, err))
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, ref, s.scanError(ctx, fmt.Errorf("fetching the image of %s for %s: %w", ref, platform.String(), err))
	}
	imageRef := ref
	imageRef.Digest = digest.String()
	if imageRef.Digest != ref.Digest {
		if err := s.store.PutAlias(ref.Digest, platform, imageRef.Digest); err != nil {
			return nil, ref, fmt.Errorf("keeping which image %s names for %s: %w", ref, platform.String(), err)
		}
	}
	return img, imageRef, nil
}

// digestRef parses ref's digest reference and returns the options that reach its registry.
func (s *Scanner) digestRef(ctx context.Context, ref ImageRef) (name.Digest, []remote.Option, error) {
	parsed, err := s.registry.ParseReference(ref.String())
	if err != nil {
		return name.Digest{}, nil, err
	}
	digestRef, ok := parsed.(name.Digest)
	if !ok {
		return name.Digest{}, nil, registry.Errorf(registry.KindUnsupported, "%s is not a digest reference", ref)
	}
	return digestRef, s.registry.RemoteOptions(ctx, digestRef, ref.Keychain), nil
}

// Bounds of an index's images: nested indexes are followed this deep and at most this many of
// them, at most this many images are considered, and at most this many images that name no
// platform have their config read.
const (
	maxIndexDepth        = 2
	maxNestedIndexes     = 8
	maxIndexImages       = 1024
	maxUnplatformedReads = 4
)

// indexImage is an image an index names, with its platform: the index's, or, for an image the
// index names none for, its config's, as containerd reads it.
type indexImage struct {
	digest   v1.Hash
	platform v1.Platform
}

// indexImages returns the images the index manifest raw names, nested indexes followed, for the
// platforms it has images for (which image a node runs is runtimeChoice's); known is false when
// some image's platform could not be told (past the bounds).
func (s *Scanner) indexImages(ctx context.Context, index name.Digest, raw []byte, opts []remote.Option) ([]indexImage, bool, error) {
	var out []indexImage
	known, reads, fetches := true, 0, 0
	seen := map[v1.Hash]bool{}
	var walk func(raw []byte, depth int) error
	walk = func(raw []byte, depth int) error {
		m, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return registry.Errorf(registry.KindUnsupported, "the image index %s is malformed: %v", index, err)
		}
		for _, d := range m.Manifests {
			if len(out) == maxIndexImages {
				return registry.Errorf(registry.KindUnsupported, "the image index %s names more than %d images", index, maxIndexImages)
			}
			child := index.Context().Digest(d.Digest.String())
			switch {
			case d.MediaType.IsIndex():
				if depth == maxIndexDepth || fetches == maxNestedIndexes || seen[d.Digest] {
					known = known && seen[d.Digest]
					continue
				}
				seen[d.Digest] = true
				fetches++
				desc, err := remote.Get(child, opts...)
				if err != nil {
					return s.scanError(ctx, fmt.Errorf("fetching the nested index %s of %s: %w", d.Digest, index, err))
				}
				if err := walk(desc.Manifest, depth+1); err != nil {
					return err
				}
			case !d.MediaType.IsImage():
				continue // not an image (an artifact)
			case d.Platform != nil:
				out = append(out, indexImage{digest: d.Digest, platform: *d.Platform})
			case reads == maxUnplatformedReads:
				known = false
			default:
				reads++
				p, err := s.configPlatform(child, opts)
				if err != nil {
					return s.scanError(ctx, fmt.Errorf("reading the platform of %s in %s: %w", d.Digest, index, err))
				}
				out = append(out, indexImage{digest: d.Digest, platform: p})
			}
		}
		return nil
	}
	return out, known, walk(raw, 0)
}

// configPlatform reads the platform of the image ref from its config, the config's size bounded
// first.
func (s *Scanner) configPlatform(ref name.Digest, opts []remote.Option) (v1.Platform, error) {
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return v1.Platform{}, err
	}
	m, err := img.Manifest()
	if err != nil {
		return v1.Platform{}, err
	}
	if bound := s.opts.Limits.MaxConfigBytes; bound > 0 && m.Config.Size > bound {
		return v1.Platform{}, registry.Errorf(registry.KindUnsupported, "the config of %s is %d bytes, more than %d (--max-config-bytes)", ref, m.Config.Size, bound)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return v1.Platform{}, err
	}
	return v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant, OSVersion: cfg.OSVersion}, nil
}

// runtimeChoice returns the digest of the image a node of platform p runs from the index raw, as
// containerd's images.Manifest chooses it (core/images/image.go, which the CRI pulls with
// platforms.Only): at each level, of the descriptors whose platform matches or that name none,
// those naming one first in Only's order, then the others in the index's order, only the first
// is followed; an image that names no platform must match by its config.
func (s *Scanner) runtimeChoice(ctx context.Context, index name.Digest, raw []byte, p v1.Platform, opts []remote.Option) (v1.Hash, error) {
	m := platform.Matcher(specOf(p))
	for depth := 0; ; depth++ {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return v1.Hash{}, registry.Errorf(registry.KindUnsupported, "the image index %s is malformed: %v", index, err)
		}
		var descs []v1.Descriptor
		for _, d := range idx.Manifests {
			if d.Platform == nil || m.Match(specOf(*d.Platform)) {
				descs = append(descs, d)
			}
		}
		sort.SliceStable(descs, func(i, j int) bool {
			if descs[i].Platform == nil {
				return false
			}
			if descs[j].Platform == nil {
				return true
			}
			return m.Less(specOf(*descs[i].Platform), specOf(*descs[j].Platform))
		})
		if len(descs) == 0 {
			return v1.Hash{}, registry.Errorf(registry.KindUnsupported, "the image index %s has no image for %s", index, p.String())
		}
		d := descs[0]
		child := index.Context().Digest(d.Digest.String())
		switch {
		case d.MediaType.IsIndex():
			if depth == maxIndexDepth {
				return v1.Hash{}, registry.Errorf(registry.KindUnsupported, "the image index %s nests indexes more than %d deep", index, maxIndexDepth)
			}
			desc, err := remote.Get(child, opts...)
			if err != nil {
				return v1.Hash{}, s.scanError(ctx, fmt.Errorf("fetching the nested index %s of %s: %w", d.Digest, index, err))
			}
			raw = desc.Manifest
		case d.MediaType.IsImage():
			if d.Platform == nil {
				cp, err := s.configPlatform(child, opts)
				if err != nil {
					return v1.Hash{}, s.scanError(ctx, fmt.Errorf("reading the platform of %s in %s: %w", d.Digest, index, err))
				}
				if !m.Match(specOf(cp)) {
					return v1.Hash{}, registry.Errorf(registry.KindUnsupported, "the image index %s has no image for %s", index, p.String())
				}
			}
			return d.Digest, nil
		default:
			return v1.Hash{}, registry.Errorf(registry.KindUnsupported, "the image index %s names a %s for %s, not an image", index, d.MediaType, p.String())
		}
	}
}

// specOf is p as containerd's platforms package takes it.
func specOf(p v1.Platform) specs.Platform {
	return specs.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, OSVersion: p.OSVersion, OSFeatures: p.OSFeatures}
}

// IndexPlatforms returns the platforms (os/architecture[/variant], normalised) ref's digest has
// images for when it names an image index, nil when it names an image manifest or they cannot
// all be told. They are kept with the index's aliases; an index seen before they were kept is
// read from the registry once more.
func (s *Scanner) IndexPlatforms(ctx context.Context, ref ImageRef) ([]string, error) {
	if inv, err := s.store.Get(ref.Digest); err == nil && inv != nil && inv.Platform != "" {
		return nil, nil // an image manifest's own inventory
	}
	if platforms, ok, err := s.store.IndexPlatforms(ref.Digest); err != nil || ok {
		return platforms, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	digestRef, opts, err := s.digestRef(ctx, ref)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(digestRef, opts...)
	if err != nil {
		return nil, s.scanError(ctx, fmt.Errorf("fetching %s: %w", ref, err))
	}
	if !desc.MediaType.IsIndex() {
		return nil, nil
	}
	images, known, err := s.indexImages(ctx, digestRef, desc.Manifest, opts)
	if err != nil {
		return nil, err
	}
	if err := s.keepIndexPlatforms(ref.Digest, images, known); err != nil {
		return nil, err
	}
	platforms, _, err := s.store.IndexPlatforms(ref.Digest)
	return platforms, err
}

// keepIndexPlatforms keeps the platforms of an index's images (attestation manifests,
// unknown/unknown, are not images). An index whose images' platforms are not all known, or that
// has none, or more than maxIndexPlatforms, keeps none: every platform then counts as one it may
// have.
func (s *Scanner) keepIndexPlatforms(index string, images []indexImage, known bool) error {
	if !known {
		return nil
	}
	seen := map[string]bool{}
	var platforms []string
	for _, img := range images {
		p := img.platform
		if p.OS == "" || p.OS == "unknown" || p.Architecture == "" || p.Architecture == "unknown" {
			continue
		}
		f := platform.Format(specs.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant})
		if !seen[f] {
			seen[f] = true
			platforms = append(platforms, f)
		}
	}
	if len(platforms) == 0 || len(platforms) > maxIndexPlatforms {
		return nil
	}
	sort.Strings(platforms)
	return s.store.PutIndexPlatforms(index, platforms)
}

// Re-analysis waits after a failure: at least ReanalysisRetry (or the registry's Retry-After);
// ReanalysisRetryTerminal after a failure that a new try would repeat (the image is unsupported,
// or analyses of it stopped the process).
const (
	ReanalysisRetry         = 5 * time.Minute
	ReanalysisRetryTerminal = 24 * time.Hour
)

// Reanalyse starts, in the background, a new analysis of ref's digest when its kept inventory
// was made before ref.AnalyzedAfter; done gets the outcome. It starts nothing, and reports false,
// when no inventory is kept (Inventory analyses those), the kept one is recent enough, one is
// already running for the digest, a re-analysis of it failed less than ReanalysisRetry (or its
// Retry-After, or ReanalysisRetryTerminal) ago, or analyses of it crashed the process: the kept
// inventory serves meanwhile. The analysis shares Inventory's slots, time limit and crash marks.
func (s *Scanner) Reanalyse(ref ImageRef, done func(error)) bool {
	kept, err := s.kept(ref)
	if err != nil || kept == nil || ref.AnalyzedAfter.IsZero() || s.serves(kept, ref) || s.marks.Crashes(kept.Digest) > 0 {
		return false
	}
	now := s.opts.Clock.Now()
	s.reMu.Lock()
	if s.reRunning == nil {
		s.reRunning, s.reFailedAt = map[string]bool{}, map[string]time.Time{}
	}
	// By repository too: another registry's failure to serve the same digest is not this one's.
	key := ref.Repository + "@" + kept.Digest
	if s.reRunning[key] || now.Before(s.reFailedAt[key]) {
		s.reMu.Unlock()
		return false
	}
	s.reRunning[key] = true
	s.reMu.Unlock()
	go func() {
		_, _, err := s.Inventory(context.Background(), ref)
		s.reMu.Lock()
		delete(s.reRunning, key)
		if err != nil {
			wait := ReanalysisRetry
			if after, ok := registry.RetryAfter(err); ok && after > wait {
				wait = after
			}
			if kind := registry.KindOf(err); kind == registry.KindUnsupported || kind == registry.KindAnalysisCrashed {
				wait = ReanalysisRetryTerminal
			}
			s.reFailedAt[key] = s.opts.Clock.Now().Add(wait)
		} else {
			delete(s.reFailedAt, key)
		}
		s.reMu.Unlock()
		if done != nil {
			done(err)
		}
	}()
	return true
}

// servesRef reports whether the kept inventory inv serves ref: it exists and was analysed after
// ref.AnalyzedAfter.
func servesRef(inv *Inventory, ref ImageRef) bool {
	return inv != nil && (ref.AnalyzedAfter.IsZero() || inv.AnalyzedAt.After(ref.AnalyzedAfter))
}

// serves is servesRef, and false for an inventory whose Java archives were not analysed when a
// Java DB is loaded now.
func (s *Scanner) serves(inv *Inventory, ref ImageRef) bool {
	if !servesRef(inv, ref) {
		return false
	}
	if !linuxOrUnknown(inv.Platform) {
		return false // kept before such images were refused: analysed again, and refused
	}
	if inv.JavaArchives == 0 || s.opts.JavaDB == nil {
		return true
	}
	if s.opts.JavaDB.Loaded() {
		return false
	}
	// Still none: ask again (the Java DB manager paces its tries).
	s.opts.JavaDB.Want()
	return true
}

// Crashes returns how many analyses of digest started and never ended: the process died during
// them.
func (s *Scanner) Crashes(digest string) int { return s.marks.Crashes(digest) }

// Stop is called on an orderly shutdown: the analyses it interrupts are not counted as crashes.
func (s *Scanner) Stop() { s.marks.forgetInFlight() }

// Match matches inv against the current DB; it makes no registry request.
func (s *Scanner) Match(ctx context.Context, inv *Inventory) (*Result, error) {
	return s.MatchVEX(ctx, inv, VEXOptions{})
}

// Scan returns ref's findings against the current DB, analysing the image only if no inventory
// is kept for it.
func (s *Scanner) Scan(ctx context.Context, ref ImageRef) (*Inventory, *Result, error) {
	inv, _, err := s.Inventory(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	res, err := s.Match(ctx, inv)
	return inv, res, err
}
