package scanner

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"

	"github.com/imageguard/imageguard/internal/durable"
	"github.com/imageguard/imageguard/internal/registry"
)

// Inventory is what an analysis keeps of an image: its OS and packages, without per-file lists.
// Matching it against any DB needs no registry access.
type Inventory struct {
	Repository   string    `json:"repository"`
	Digest       string    `json:"digest"`
	TrivyVersion string    `json:"trivyVersion"`
	AnalyzedAt   time.Time `json:"analyzedAt"`
	// Platform is the image's, from its config (os/architecture[/variant]; "unknown" when it
	// names none). Digest is always an image manifest's, never an index's.
	Platform string `json:"platform,omitempty"`
	// JavaArchives counts the jar, war, ear and par files not analysed for want of a Java DB:
	// their packages are missing, and the image is analysed again once a Java DB is loaded.
	JavaArchives int `json:"javaArchives,omitempty"`

	OS            ftypes.OS            `json:"os"`
	PkgRepository *ftypes.Repository   `json:"pkgRepository,omitempty"`
	Packages      ftypes.Packages      `json:"packages,omitempty"`
	Applications  []ftypes.Application `json:"applications,omitempty"`
}

// newInventory keeps of detail what detection reads.
func newInventory(ref ImageRef, trivyVersion string, detail ftypes.ArtifactDetail) *Inventory {
	inv := &Inventory{
		Repository:    ref.Repository,
		Digest:        ref.Digest,
		TrivyVersion:  trivyVersion,
		OS:            detail.OS,
		PkgRepository: detail.Repository,
		Packages:      stripFiles(detail.Packages),
	}
	for _, app := range detail.Applications {
		app.Packages = stripFiles(app.Packages)
		inv.Applications = append(inv.Applications, app)
	}
	return inv
}

// stripFiles drops the installed-file lists (thousands of paths per Debian image) that detection
// never reads.
func stripFiles(pkgs ftypes.Packages) ftypes.Packages {
	out := make(ftypes.Packages, len(pkgs))
	for i, p := range pkgs {
		p.InstalledFiles = nil
		out[i] = p
	}
	return out
}

// PackageCount returns the number of OS and language packages.
func (inv *Inventory) PackageCount() int {
	n := len(inv.Packages)
	for _, app := range inv.Applications {
		n += len(app.Packages)
	}
	return n
}

var digestPattern = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)

// DigestFileName returns the file name of what the cache keeps of digest ("sha256-<hex>"), and an
// error for a digest that is not sha256:<64 hex>, so no name can climb out of its folder.
func DigestFileName(digest string) (string, error) {
	if !digestPattern.MatchString(digest) {
		return "", fmt.Errorf("malformed digest %q", digest)
	}
	return "sha256-" + digest[len("sha256:"):], nil
}

// Store keeps inventories on disk at <dir>/inventory/<trivy-version>/<digest>.json.gz, so that a
// restart does not pull images again. An analysis by another Trivy version is not reused: its
// analyzers may find other packages.
type Store struct {
	dir string
	// MaxBytes bounds an inventory's encoded size; 0: no bound.
	MaxBytes int64
}

// NewStore returns a Store under cacheDir for inventories of trivyVersion.
func NewStore(cacheDir, trivyVersion string) (*Store, error) {
	dir := filepath.Join(cacheDir, "inventory", sanitize(trivyVersion))
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating the inventory cache: %w", err)
	}
	// What a crash left of an inventory being written, and the index choices of an earlier layout.
	if _, err := durable.RemoveTemporary(dir); err != nil {
		return nil, fmt.Errorf("cleaning the inventory cache: %w", err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "index")); err != nil {
		return nil, fmt.Errorf("cleaning the inventory cache: %w", err)
	}
	return &Store{dir: dir}, nil
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// sanitize makes a version usable as a folder name.
func sanitize(s string) string { return unsafeChars.ReplaceAllString(s, "_") }

func (s *Store) path(digest string) (string, error) {
	name, err := DigestFileName(digest)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.dir, name+".json.gz"), nil
}

// Get returns the kept inventory of digest, or nil when there is none. A corrupt file counts as
// none (it is rewritten by the next analysis).
func (s *Store) Get(digest string) (*Inventory, error) {
	p, err := s.path(digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, nil //nolint:nilerr // corrupt: analyse again
	}
	inv := &Inventory{}
	if err := json.NewDecoder(zr).Decode(inv); err != nil || inv.Digest != digest {
		return nil, nil //nolint:nilerr // corrupt: analyse again
	}
	return inv, nil
}

// aliasPath is where the digest of the image the index names for platform is kept.
// indexDir holds what is kept of indexes: which image each names for a platform, and the
// platforms it has images for. Its name changes with how they are chosen: those kept by an
// earlier choice (go-containerregistry's, before containerd's) are not served.
const indexDir = "index.v2"

func (s *Store) aliasPath(index string, platform v1.Platform) (string, error) {
	name, err := DigestFileName(index)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.dir, indexDir, name, sanitize(platform.String())), nil
}

// Alias returns the digest of the image the index names for platform, as PutAlias kept it; ""
// when none is kept. An index is immutable: what it names never changes.
func (s *Store) Alias(index string, platform v1.Platform) (string, error) {
	p, err := s.aliasPath(index, platform)
	if err != nil {
		return "", err
	}
	raw, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if d := string(raw); digestPattern.MatchString(d) {
		return d, nil
	}
	return "", nil // corrupt: resolved again
}

// PutAlias keeps that the index names image for platform.
func (s *Store) PutAlias(index string, platform v1.Platform, image string) error {
	p, err := s.aliasPath(index, platform)
	if err != nil {
		return err
	}
	if !digestPattern.MatchString(image) {
		return fmt.Errorf("malformed digest %q", image)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return err
	}
	return durable.Write(p, 0o640, func(w io.Writer) error {
		_, err := io.WriteString(w, image)
		return err
	})
}

// maxIndexPlatforms bounds the platforms kept of an index; one that names more is kept as not
// known (every platform then counts as one it may have).
const maxIndexPlatforms = 64

// IndexPlatforms returns the platforms (os/architecture[/variant]) the index has images for, as
// PutIndexPlatforms kept them; ok is false when none are kept.
func (s *Store) IndexPlatforms(index string) (platforms []string, ok bool, err error) {
	name, err := DigestFileName(index)
	if err != nil {
		return nil, false, err
	}
	raw, err := os.ReadFile(filepath.Join(s.dir, indexDir, name, "platforms.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if json.Unmarshal(raw, &platforms) != nil || len(platforms) == 0 || len(platforms) > maxIndexPlatforms {
		return nil, false, nil // corrupt: read from the registry again
	}
	for _, p := range platforms {
		if _, err := v1.ParsePlatform(p); err != nil || len(p) > 128 {
			return nil, false, nil
		}
	}
	return platforms, true, nil
}

// PutIndexPlatforms keeps the platforms the index has images for.
func (s *Store) PutIndexPlatforms(index string, platforms []string) error {
	name, err := DigestFileName(index)
	if err != nil {
		return err
	}
	dir := filepath.Join(s.dir, indexDir, name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	return durable.Write(filepath.Join(dir, "platforms.json"), 0o640, func(w io.Writer) error {
		return json.NewEncoder(w).Encode(platforms)
	})
}

// Put writes inv durably (internal/durable), so a crash or a power cut never leaves a
// half-written inventory.
func (s *Store) Put(inv *Inventory) error {
	p, err := s.path(inv.Digest)
	if err != nil {
		return err
	}
	err = durable.Write(p, 0o640, func(w io.Writer) error {
		zw := gzip.NewWriter(w)
		if err := json.NewEncoder(&boundedWriter{w: zw, max: s.MaxBytes}).Encode(inv); err != nil {
			return err
		}
		return zw.Close()
	})
	if errors.Is(err, errTooLarge) {
		return registry.Errorf(registry.KindUnsupported, "the image's inventory is more than %d bytes encoded (--max-inventory-bytes)", s.MaxBytes)
	}
	return err
}

// boundedWriter fails with errTooLarge once more than max bytes would be written (max 0: no
// bound).
type boundedWriter struct {
	w            io.Writer
	max, written int64
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	if b.max > 0 && b.written+int64(len(p)) > b.max {
		return 0, errTooLarge
	}
	b.written += int64(len(p))
	return b.w.Write(p)
}
