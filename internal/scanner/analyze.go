package scanner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/aquasecurity/trivy/pkg/cache"
	"github.com/aquasecurity/trivy/pkg/fanal/analyzer"
	"github.com/aquasecurity/trivy/pkg/fanal/applier"
	"github.com/aquasecurity/trivy/pkg/fanal/artifact"
	imageartifact "github.com/aquasecurity/trivy/pkg/fanal/artifact/image"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"

	"github.com/imageguard/imageguard/internal/registry"
)

// disabledAnalyzers are Trivy's analyzers that find nothing the vulnerability match uses: what
// `trivy image --scanners vuln` disables (lock files, removed apk packages, secrets, config files,
// licenses, Dockerfile history, executables, RPM archives). Without a Java DB (javaDir empty)
// jar files are not analysed, only counted; with one, they are analysed as Trivy does.
func disabledAnalyzers(javaDir string) []analyzer.Type {
	if javaDir != "" {
		return append(trivyDisabledAnalyzers(), typeJavaArchives)
	}
	return append(trivyDisabledAnalyzers(), analyzer.TypeJar)
}

func trivyDisabledAnalyzers() []analyzer.Type {
	disabled := append([]analyzer.Type{}, analyzer.TypeLockfiles...)
	disabled = append(disabled, analyzer.TypeConfigFiles...)
	return append(disabled,
		analyzer.TypeApkCommand,
		analyzer.TypeSecret,
		analyzer.TypeImageConfigSecret,
		analyzer.TypeLicenseFile,
		analyzer.TypeDpkgLicense,
		analyzer.TypeHistoryDockerfile,
		analyzer.TypeExecutable,
		analyzer.TypeRpmArchive,
	)
}

// ImageRef names an image to analyse and how to reach it.
type ImageRef struct {
	// Repository is the image repository without tag or digest, e.g. registry.example.com/app.
	Repository string
	// Digest is the manifest digest (sha256:...): an image's, or a multi-platform index's, whose
	// image for Platform is analysed.
	Digest string
	// Platform picks the image of an index digest: os/architecture[/variant] (ParsePlatform);
	// empty is the registry client's platform (linux/amd64).
	Platform string
	// Keychain has the credentials for the registry; nil is anonymous.
	Keychain authn.Keychain
	// AnalyzedAfter, when set, asks for an inventory analysed after it: a kept one that is older
	// is analysed again (the image is pulled again).
	AnalyzedAfter time.Time
}

// String returns repository@digest.
func (r ImageRef) String() string { return r.Repository + "@" + r.Digest }

// layerCacheDir is where analyses read and write the layer cache: set in the controller's
// process (from its LayerCache) and in a worker's (from its request); empty: no layer cache.
type layerCacheDir struct {
	dir string
	// maxEntry bounds one entry; writeBudget the bytes one analysis writes.
	maxEntry, writeBudget int64
	// now, when set, stamps the entries written (the analysis's start by the controller's clock).
	now time.Time
}

// analyze pulls ref's config and the layers the layer cache lacks, once each, and runs Trivy's
// analyzers over them. img is ref's image when the caller fetched its manifest already, else nil;
// javaDir the folder of the Java DB, empty without one (jar files are then only counted).
// It returns what it did with the layer cache (nil without one).
func (s *Scanner) analyze(ctx context.Context, ref ImageRef, img v1.Image, javaDir string) (*Inventory, *LayerUse, error) {
	started := time.Now()
	if javaDir != "" {
		if err := useJavaDB(s.opts.TempDir, javaDir); err != nil {
			return nil, &LayerUse{}, err
		}
	}
	if img == nil {
		parsed, err := s.registry.ParseReference(ref.String())
		if err != nil {
			return nil, &LayerUse{}, err
		}
		digestRef, ok := parsed.(name.Digest)
		if !ok {
			return nil, &LayerUse{}, registry.Errorf(registry.KindUnsupported, "%s is not a digest reference", ref)
		}
		if img, err = remote.Image(digestRef, s.registry.RemoteOptions(ctx, digestRef, ref.Keychain)...); err != nil {
			return nil, &LayerUse{}, s.scanError(ctx, fmt.Errorf("fetching %s: %w", ref, err))
		}
	}

	dir, err := os.MkdirTemp(s.opts.TempDir, "analysis-")
	if err != nil {
		return nil, &LayerUse{}, err
	}
	defer os.RemoveAll(dir)
	fetched, err := fetchImage(ctx, img, dir, s.opts.Limits)
	if err != nil {
		return nil, &LayerUse{}, s.scanError(ctx, err)
	}
	configName, err := img.ConfigName()
	if err != nil {
		return nil, &LayerUse{}, s.scanError(ctx, err)
	}
	trivyImg := &trivyImage{Image: fetched, name: ref.String(), id: configName, repoDigest: ref.String()}

	// The blob cache: the layer cache's view for this image, or one for this analysis only.
	var blobs cache.Cache = cache.NewMemoryCache()
	var view *layerView
	if s.layerDir.dir != "" {
		view = newLayerView(s.layerDir.dir, layerViewOptions{
			MaxEntry: s.layerDir.maxEntry, WriteBudget: s.layerDir.writeBudget, Spend: fetched.spendCached,
			AnalyzedAfter: ref.AnalyzedAfter, Verified: fetched.verified, Now: s.analysisNow(),
		}, fetched.diffIDStrings(), fetched.layerDigests())
		defer view.Close()
		blobs = view
	}
	detail, err := s.inspect(ctx, trivyImg, blobs, javaDir)
	var use *LayerUse
	if view != nil {
		use = view.Use()
	}
	if err != nil {
		return nil, use, s.scanError(ctx, err)
	}
	inv := newInventory(ref, s.trivyVersion, detail)
	inv.Platform = platformOfConfig(fetched)
	if p := inv.Platform; !linuxOrUnknown(p) {
		// Trivy finds nothing in a Windows image: a clean report would be a lie.
		return nil, use, registry.Errorf(registry.KindUnsupported, "the image is for %s: only Linux images are analysed", p)
	}
	inv.JavaArchives = javaArchives(detail)
	if limit := s.opts.Limits.MaxPackages; limit > 0 && inv.PackageCount() > limit {
		return nil, use, registry.Errorf(registry.KindUnsupported, "the image has %d packages, more than the limit of %d (--max-packages)", inv.PackageCount(), limit)
	}
	inv.AnalyzedAt = started.UTC().Truncate(time.Second)
	return inv, use, nil
}

// linuxOrUnknown reports whether an inventory's platform is Linux, or not named: what Trivy analyses.
func linuxOrUnknown(platform string) bool {
	return platform == "" || platform == "unknown" || strings.HasPrefix(platform, "linux/")
}

// platformOfConfig returns the platform img's config names (os/architecture[/variant]), or
// "unknown" when it names none.
func platformOfConfig(img v1.Image) string {
	cfg, err := img.ConfigFile()
	if err != nil || cfg.OS == "" || cfg.Architecture == "" {
		return "unknown"
	}
	p := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}.String()
	if len(p) > 64 {
		return "unknown"
	}
	return p
}

// analysisNow is the time an analysis stamps what it keeps with: the scanner's clock, or in a
// worker the start its controller gave.
func (s *Scanner) analysisNow() time.Time {
	if s.opts.Clock != nil {
		return s.opts.Clock.Now()
	}
	return s.layerDir.now
}

// inspect runs Trivy's analyzers over img and merges the layers, as Trivy's own scan service
// does, with blobs as Trivy's cache.
func (s *Scanner) inspect(ctx context.Context, img ftypes.Image, blobs cache.Cache, javaDir string) (ftypes.ArtifactDetail, error) {
	art, err := imageartifact.NewArtifact(img, blobs, artifact.Option{
		DisabledAnalyzers: disabledAnalyzers(javaDir),
		// One layer at a time: Trivy holds each file an analyzer reads in memory when it is
		// under 100 MB, so what one analysis holds is bounded by about two such files.
		Parallel:   1,
		NoProgress: true,
		Offline:    true,
	})
	if err != nil {
		return ftypes.ArtifactDetail{}, fmt.Errorf("preparing Trivy's analyzers: %w", err)
	}
	ref, err := art.Inspect(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ftypes.ArtifactDetail{}, fmt.Errorf("analysing the image: %w", err)
		}
		// A full cache volume is ours to fix, not the image's.
		if errors.Is(err, syscall.ENOSPC) {
			return ftypes.ArtifactDetail{}, registry.Errorf(registry.KindUnavailable, "analysing the image: the cache volume is full: %v", err)
		}
		// A layer that failed to download or a check as Trivy asked for it says why itself.
		var typed *registry.Error
		if errors.As(err, &typed) {
			return ftypes.ArtifactDetail{}, typed
		}
		return ftypes.ArtifactDetail{}, registry.Errorf(registry.KindUnsupported, "analysing the image: %v", err)
	}
	detail, err := applier.NewApplier(blobs).ApplyLayers(ctx, ref.ID, ref.BlobIDs)
	switch {
	case errors.Is(err, analyzer.ErrUnknownOS):
		// Packages may be OS-independent (a Go binary in a scratch image).
		if len(detail.Packages) != 0 {
			detail.OS = ftypes.OS{Family: "none"}
		}
		if detail.Repository != nil {
			detail.OS = ftypes.OS{Family: detail.Repository.Family, Name: detail.Repository.Release}
		}
	case errors.Is(err, analyzer.ErrNoPkgsDetected):
		// An OS without a package database (files deleted): language packages may remain.
	case err != nil:
		return ftypes.ArtifactDetail{}, fmt.Errorf("merging the layers: %w", err)
	}
	return detail, nil
}

// scanError types err, preferring the scan's deadline as the cause when it passed.
func (s *Scanner) scanError(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return registry.Errorf(registry.KindTimeout, "the scan did not finish within its time limit: %v", err)
	}
	return registry.Classify(err)
}

// trivyImage adds to a go-containerregistry image the names Trivy's image artifact asks for.
type trivyImage struct {
	v1.Image
	name       string
	id         v1.Hash
	repoDigest string
}

func (t *trivyImage) Name() string          { return t.name }
func (t *trivyImage) ID() (string, error)   { return t.id.String(), nil }
func (t *trivyImage) RepoTags() []string    { return nil }
func (t *trivyImage) RepoDigests() []string { return []string{t.repoDigest} }
