package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aquasecurity/trivy-db/pkg/metadata"
	dbtypes "github.com/aquasecurity/trivy-db/pkg/types"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	bolt "go.etcd.io/bbolt"
	"sigs.k8s.io/yaml"
)

// Media types and annotation of the Trivy DB OCI artifact, as Trivy's pkg/db and pkg/oci expect.
const (
	// DBLayerMediaType is the only layer media type Trivy's DB client accepts.
	DBLayerMediaType types.MediaType = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
	// DBConfigMediaType is the artifact's config media type, as the published trivy-db has it.
	DBConfigMediaType types.MediaType = "application/vnd.aquasec.trivy.config.v1+json"
	// DBTitleAnnotation names the file Trivy saves the layer as before unpacking it; without it
	// Trivy's pkg/oci refuses the artifact.
	DBTitleAnnotation = "org.opencontainers.image.title"
	// DBArchiveName is the value of DBTitleAnnotation; its .tar.gz suffix tells Trivy to unpack it.
	DBArchiveName = "db.tar.gz"
)

// DBSchemaVersion is the Trivy DB schema these fixtures write (trivy-db's db.SchemaVersion).
const DBSchemaVersion = 2

// Bucket names (trivy-db's pkg/vulnsrc/bucket) used most by this repository's tests.
const (
	// BucketNPM holds GitHub's reviewed npm advisories.
	BucketNPM = "npm::GitHub Security Advisory npm"
	// BucketGo holds GitHub's reviewed Go advisories.
	BucketGo = "go::GitHub Security Advisory Go"
)

// BucketAlpine returns the bucket of an Alpine release, keyed by major.minor ("3.22").
func BucketAlpine(version string) string { return "alpine " + majorMinor(version) }

// BucketDebian returns the bucket of a Debian release, keyed by major ("12").
func BucketDebian(version string) string {
	major, _, _ := strings.Cut(version, ".")
	return "debian " + major
}

// DBSpec describes a fixture vulnerability DB. ParseAdvisories reads it from YAML:
//
//	updatedAt: 2026-11-01T00:00:00Z      # optional; default: now (UTC, whole seconds)
//	nextUpdate: 2026-11-02T00:00:00Z     # optional; default: updatedAt + 24h
//	dataSources:                         # optional; only for buckets not inferred (see below)
//	  "ubuntu 24.04": {id: ubuntu, name: Ubuntu CVE Tracker, url: https://ubuntu.com/security/cves}
//	advisories:
//	- id: CVE-2026-0001
//	  ecosystem: alpine 3.22             # the trivy-db bucket name
//	  package: openssl                   # Alpine: origin; Debian: SOURCE package; npm/Go: name
//	  fixedVersion: 3.3.2-r1             # OS advisories; empty = unfixed (status affected)
//	  affectedVersion: 3.3.0-r0          # optional, OS advisories: the first affected version
//	  status: will_not_fix               # optional, OS advisories without fixedVersion
//	  severity: CRITICAL                 # UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL
//	  title: openssl overflow
//	  description: ...
//	  references: [https://example.invalid/CVE-2026-0001]
//	- id: GHSA-xxxx-yyyy-zzzz
//	  ecosystem: npm::GitHub Security Advisory npm
//	  package: lodash
//	  vulnerableVersions: ["<4.17.21"]   # language advisories: npm/Go/... version ranges
//	  patchedVersions: [">=4.17.21"]     # Trivy reports these, joined by ", ", as the fix
//	  severity: HIGH
//
// The data source of a bucket is inferred for "alpine <v>" (ID alpine), "debian <v>" (ID debian)
// and "<ecosystem>::GitHub Security Advisory <Name>" (ID ghsa); other buckets need an entry in
// dataSources. Severity is stored as the vendor severity of that data source ID, which Trivy's
// "auto" severity source selects. One ID may appear in several buckets; its vulnerability record
// then merges the severities and takes the first non-empty title and description.
type DBSpec struct {
	UpdatedAt   time.Time                 `json:"updatedAt,omitzero"`
	NextUpdate  time.Time                 `json:"nextUpdate,omitzero"`
	DataSources map[string]DataSourceSpec `json:"dataSources,omitempty"`
	Advisories  []AdvisorySpec            `json:"advisories"`
}

// DataSourceSpec is the data source recorded for a bucket (trivy-db's types.DataSource).
type DataSourceSpec struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	URL  string `json:"url,omitempty"`
}

// AdvisorySpec is one advisory of a DBSpec; see DBSpec for the fields.
type AdvisorySpec struct {
	ID                 string   `json:"id"`
	Ecosystem          string   `json:"ecosystem"`
	Package            string   `json:"package"`
	FixedVersion       string   `json:"fixedVersion,omitempty"`
	AffectedVersion    string   `json:"affectedVersion,omitempty"`
	Status             string   `json:"status,omitempty"`
	VulnerableVersions []string `json:"vulnerableVersions,omitempty"`
	PatchedVersions    []string `json:"patchedVersions,omitempty"`
	// Arches, for the Red Hat family's buckets (Rocky, Alma), writes the advisory as trivy-db
	// does today: an entry per architecture set under Entries.
	Arches      []string `json:"arches,omitempty"`
	Severity    string   `json:"severity,omitempty"`
	Title       string   `json:"title,omitempty"`
	Description string   `json:"description,omitempty"`
	References  []string `json:"references,omitempty"`
}

// ParseAdvisories reads a DBSpec from YAML (format on DBSpec), rejecting unknown fields so a
// typo cannot silently drop an advisory.
func ParseAdvisories(y []byte) (*DBSpec, error) {
	var spec DBSpec
	if err := yaml.UnmarshalStrict(y, &spec); err != nil {
		return nil, fmt.Errorf("parse advisories: %w", err)
	}
	if _, err := spec.dataSources(); err != nil {
		return nil, err
	}
	return &spec, nil
}

// dataSources validates the spec and returns the data source of every bucket it uses.
func (s *DBSpec) dataSources() (map[string]dbtypes.DataSource, error) {
	sources := map[string]dbtypes.DataSource{}
	seen := map[[3]string]bool{}
	var errs []error
	for i, a := range s.Advisories {
		where := fmt.Sprintf("advisory %d (%s)", i, a.ID)
		if a.ID == "" || a.Ecosystem == "" || a.Package == "" {
			errs = append(errs, fmt.Errorf("%s: id, ecosystem and package are required", where))
			continue
		}
		k := [3]string{a.Ecosystem, a.Package, a.ID}
		if seen[k] {
			errs = append(errs, fmt.Errorf("%s: duplicate for %s/%s", where, a.Ecosystem, a.Package))
		}
		seen[k] = true
		if a.Severity != "" {
			if _, err := dbtypes.NewSeverity(a.Severity); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
		}
		if a.Status != "" && dbtypes.NewStatus(a.Status) == dbtypes.StatusUnknown && a.Status != "unknown" {
			errs = append(errs, fmt.Errorf("%s: unknown status %q (want one of %v)", where, a.Status, dbtypes.Statuses))
		}
		lang := strings.Contains(a.Ecosystem, "::")
		switch {
		case lang && (a.FixedVersion != "" || a.Status != ""):
			errs = append(errs, fmt.Errorf("%s: language buckets use vulnerableVersions/patchedVersions", where))
		case lang && len(a.VulnerableVersions) == 0 && len(a.PatchedVersions) == 0:
			errs = append(errs, fmt.Errorf("%s: vulnerableVersions or patchedVersions required", where))
		case lang && a.AffectedVersion != "":
			errs = append(errs, fmt.Errorf("%s: affectedVersion is for OS buckets", where))
		case !lang && (len(a.VulnerableVersions) != 0 || len(a.PatchedVersions) != 0):
			errs = append(errs, fmt.Errorf("%s: OS buckets use fixedVersion", where))
		case a.FixedVersion != "" && a.Status != "":
			errs = append(errs, fmt.Errorf("%s: status is only for unfixed advisories", where))
		}
		if _, ok := sources[a.Ecosystem]; ok {
			continue
		}
		ds, err := s.dataSource(a.Ecosystem)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		sources[a.Ecosystem] = ds
	}
	return sources, errors.Join(errs...)
}

func (s *DBSpec) dataSource(bucket string) (dbtypes.DataSource, error) {
	if ds, ok := s.DataSources[bucket]; ok {
		if ds.ID == "" {
			return dbtypes.DataSource{}, fmt.Errorf("data source of %q: id is required", bucket)
		}
		return dbtypes.DataSource{ID: dbtypes.SourceID(ds.ID), Name: ds.Name, URL: ds.URL}, nil
	}
	// The same values trivy-db's alpine, debian and ghsa sources record.
	switch {
	case strings.HasPrefix(bucket, "alpine "):
		return dbtypes.DataSource{ID: "alpine", Name: "Alpine Secdb", URL: "https://secdb.alpinelinux.org/"}, nil
	case strings.HasPrefix(bucket, "debian "):
		return dbtypes.DataSource{ID: "debian", Name: "Debian Security Tracker",
			URL: "https://salsa.debian.org/security-tracker-team/security-tracker"}, nil
	}
	if _, platform, ok := strings.Cut(bucket, "::"); ok {
		if eco, ok := strings.CutPrefix(platform, "GitHub Security Advisory "); ok {
			return dbtypes.DataSource{ID: "ghsa", Name: platform,
				URL: "https://github.com/advisories?query=type%3Areviewed+ecosystem%3A" + strings.ToLower(eco)}, nil
		}
	}
	return dbtypes.DataSource{}, fmt.Errorf("no data source known for bucket %q: add it under dataSources", bucket)
}

// BuildDB writes a Trivy DB for spec to <dir>/db/trivy.db and <dir>/db/metadata.json, the layout
// Trivy's pkg/db reads (Init(<dir>/db)), replacing any DB already there.
//
// The bbolt file is written directly with go.etcd.io/bbolt rather than through trivy-db's
// db.Init/BatchUpdate/Close: those act on a process-wide handle, the very one Trivy's pkg/db (and
// so this repository's scanner) reads through, so building a fixture DB in a test process where a
// scanner has its DB open would redirect and then close the scanner's handle. Writing directly has
// no global state, so BuildDB is safe to call at any time, concurrently too (for distinct dirs).
// The bytes match trivy-db's Put* functions, which json-marshal each value into nested buckets:
//
//	"data-source" / <bucket>              -> types.DataSource
//	<bucket> / <package> / <vuln ID>      -> *types.Advisory (via its MarshalJSON, so Status is
//	                                         stored as the integer Trivy reads back)
//	"vulnerability" / <vuln ID>           -> types.Vulnerability (bucket always present)
//
// TestBuildDBReadByTrivyDB opens the result with trivy-db's own reader to keep this honest.
//
// metadata.json gets Version 2, UpdatedAt, NextUpdate and DownloadedAt = UpdatedAt, so a DB built
// here can also be used in place without Trivy deciding it is corrupted (Trivy overwrites
// DownloadedAt after downloading the artifact anyway).
func BuildDB(dir string, spec *DBSpec) error {
	sources, err := spec.dataSources()
	if err != nil {
		return err
	}
	updatedAt := spec.UpdatedAt
	if updatedAt.IsZero() {
		updatedAt = time.Now().UTC().Truncate(time.Second)
	}
	nextUpdate := spec.NextUpdate
	if nextUpdate.IsZero() {
		nextUpdate = updatedAt.Add(24 * time.Hour)
	}

	return writeBoltDB(dir, &bolt.Options{Timeout: 5 * time.Second}, updatedAt, nextUpdate, func(bdb *bolt.DB) error {
		return bdb.Update(func(tx *bolt.Tx) error { return writeDB(tx, spec, sources) })
	})
}

// writeBoltDB writes <dir>/db/trivy.db anew with fill, and <dir>/db/metadata.json beside it.
func writeBoltDB(dir string, opts *bolt.Options, updatedAt, nextUpdate time.Time, fill func(*bolt.DB) error) error {
	dbDir := filepath.Join(dir, "db")
	if err := os.MkdirAll(dbDir, 0o755); err != nil {
		return err
	}
	dbPath := filepath.Join(dbDir, "trivy.db")
	if err := os.Remove(dbPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	bdb, err := bolt.Open(dbPath, 0o644, opts)
	if err != nil {
		return fmt.Errorf("open %s: %w", dbPath, err)
	}
	err = fill(bdb)
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", dbPath, err)
	}

	return metadata.NewClient(dbDir).Update(metadata.Metadata{
		Version:      DBSchemaVersion,
		UpdatedAt:    updatedAt,
		NextUpdate:   nextUpdate,
		DownloadedAt: updatedAt,
	})
}

func writeDB(tx *bolt.Tx, spec *DBSpec, sources map[string]dbtypes.DataSource) error {
	// Trivy's GetVulnerability dereferences this bucket without a nil check.
	vulnBkt, err := tx.CreateBucketIfNotExists([]byte("vulnerability"))
	if err != nil {
		return err
	}
	dsBkt, err := tx.CreateBucketIfNotExists([]byte("data-source"))
	if err != nil {
		return err
	}
	for bucket, ds := range sources {
		if err := putJSON(dsBkt, bucket, ds); err != nil {
			return err
		}
	}

	vulns := map[string]*dbtypes.Vulnerability{}
	var order []string
	for _, a := range spec.Advisories {
		adv := &dbtypes.Advisory{
			FixedVersion:       a.FixedVersion,
			AffectedVersion:    a.AffectedVersion,
			VulnerableVersions: a.VulnerableVersions,
			PatchedVersions:    a.PatchedVersions,
		}
		lang := strings.Contains(a.Ecosystem, "::")
		switch {
		case a.Status != "":
			adv.Status = dbtypes.NewStatus(a.Status)
		case !lang && a.FixedVersion == "":
			// trivy-db records a status only when there is no fixed version.
			adv.Status = dbtypes.StatusAffected
		}
		root, err := tx.CreateBucketIfNotExists([]byte(a.Ecosystem))
		if err != nil {
			return err
		}
		pkgBkt, err := root.CreateBucketIfNotExists([]byte(a.Package))
		if err != nil {
			return err
		}
		if len(a.Arches) != 0 {
			adv.Arches = a.Arches
			if err := putJSON(pkgBkt, a.ID, dbtypes.Advisories{Entries: []dbtypes.Advisory{*adv}}); err != nil {
				return err
			}
		} else if err := putJSON(pkgBkt, a.ID, adv); err != nil {
			// A pointer, so that Advisory.MarshalJSON (pointer receiver) writes Status.
			return err
		}

		v, ok := vulns[a.ID]
		if !ok {
			v = &dbtypes.Vulnerability{}
			vulns[a.ID] = v
			order = append(order, a.ID)
		}
		v.Title = or(v.Title, a.Title)
		v.Description = or(v.Description, a.Description)
		for _, r := range a.References {
			if !slices.Contains(v.References, r) {
				v.References = append(v.References, r)
			}
		}
		if a.Severity != "" {
			sev, _ := dbtypes.NewSeverity(a.Severity) // validated by dataSources
			v.Severity = or(v.Severity, a.Severity)   //nolint:staticcheck // SA1019: the real DB still fills it, detection falls back on it
			if v.VendorSeverity == nil {
				v.VendorSeverity = dbtypes.VendorSeverity{}
			}
			v.VendorSeverity[sources[a.Ecosystem].ID] = sev
		}
	}
	for _, id := range order {
		if err := putJSON(vulnBkt, id, *vulns[id]); err != nil {
			return err
		}
	}
	return nil
}

func putJSON(b *bolt.Bucket, key string, value any) error {
	v, err := json.Marshal(value)
	if err != nil {
		return fmt.Errorf("marshal %s: %w", key, err)
	}
	return b.Put([]byte(key), v)
}

// DBArchive returns the gzip tar Trivy's DB artifact carries: trivy.db and metadata.json at its
// root. dir is the directory given to BuildDB (holding db/); a directory that directly holds
// trivy.db is accepted too.
func DBArchive(dir string) ([]byte, error) {
	dbDir := filepath.Join(dir, "db")
	if _, err := os.Stat(filepath.Join(dbDir, "trivy.db")); err != nil {
		dbDir = dir
	}
	return archiveOf(dbDir, "trivy.db", "metadata.json")
}

// archiveOf returns a gzip tar of the files names of dir, at its root.
func archiveOf(dbDir string, names ...string) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dbDir, n))
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b)), ModTime: fixtureTime}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// OneLayerArtifact is an artifact of Trivy DB's config media type with one layer of the given
// bytes and media type, for tests of artifacts that are not a DB: corrupt, truncated, mistyped.
func OneLayerArtifact(layer []byte, mediaType types.MediaType) (v1.Image, error) {
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{
		Layer: static.NewLayer(layer, mediaType),
	})
	if err != nil {
		return nil, err
	}
	return mutate.ConfigMediaType(img, DBConfigMediaType), nil
}

// DBArtifact wraps a DBArchive in the OCI artifact Trivy downloads: an OCI manifest with config
// media type DBConfigMediaType (config "{}") and exactly one layer of DBLayerMediaType annotated
// org.opencontainers.image.title=db.tar.gz. Trivy's pkg/oci refuses artifacts with more than one
// layer, takes the file name from that annotation, and its DB client requires the layer media type.
// The manifest is written by hand, as oras does, rather than through mutate, which would turn the
// config into an image config.
func DBArtifact(archive []byte) (v1.Image, error) {
	return oneArchiveArtifact(archive, DBLayerMediaType, DBArchiveName)
}

// oneArchiveArtifact is DBArtifact for a layer of mediaType named title.
func oneArchiveArtifact(archive []byte, mediaType types.MediaType, title string) (v1.Image, error) {
	layer := &blobLayer{b: archive, mt: mediaType}
	layerDigest, _, err := v1.SHA256(bytes.NewReader(archive))
	if err != nil {
		return nil, err
	}
	layer.digest = layerDigest
	config := []byte("{}")
	configDigest, _, err := v1.SHA256(bytes.NewReader(config))
	if err != nil {
		return nil, err
	}
	manifest, err := json.Marshal(v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: DBConfigMediaType, Digest: configDigest, Size: int64(len(config))},
		Layers: []v1.Descriptor{{
			MediaType:   mediaType,
			Digest:      layerDigest,
			Size:        int64(len(archive)),
			Annotations: map[string]string{DBTitleAnnotation: title},
		}},
	})
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&rawArtifact{manifest: manifest, config: config, layer: layer})
}

// PublishDB builds the DB for spec, wraps it as Trivy's artifact and pushes it as
// <host>/<repo>:<tag>, returning the manifest digest (what a manifest HEAD reports).
func (r *Registry) PublishDB(t testing.TB, repo, tag string, spec *DBSpec) v1.Hash {
	t.Helper()
	dir := t.TempDir()
	if err := BuildDB(dir, spec); err != nil {
		t.Fatalf("build DB: %v", err)
	}
	archive, err := DBArchive(dir)
	if err != nil {
		t.Fatalf("archive DB: %v", err)
	}
	img, err := DBArtifact(archive)
	if err != nil {
		t.Fatalf("DB artifact: %v", err)
	}
	_, digest := r.Push(t, repo, tag, img)
	return digest
}

// rawArtifact is a partial.CompressedImageCore with a hand-written manifest and config.
type rawArtifact struct {
	manifest, config []byte
	layer            *blobLayer
}

func (a *rawArtifact) RawConfigFile() ([]byte, error) { return a.config, nil }

func (a *rawArtifact) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

func (a *rawArtifact) RawManifest() ([]byte, error) { return a.manifest, nil }

func (a *rawArtifact) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if h == a.layer.digest {
		return a.layer, nil
	}
	return nil, fmt.Errorf("artifact has no layer %s", h)
}

// blobLayer is a compressed blob; partial derives the uncompressed view by gunzipping it.
type blobLayer struct {
	b      []byte
	mt     types.MediaType
	digest v1.Hash
}

func (l *blobLayer) Digest() (v1.Hash, error) { return l.digest, nil }

func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.b)), nil
}

func (l *blobLayer) Size() (int64, error) { return int64(len(l.b)), nil }

func (l *blobLayer) MediaType() (types.MediaType, error) { return l.mt, nil }
