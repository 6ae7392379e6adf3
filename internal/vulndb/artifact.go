package vulndb

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	bolt "go.etcd.io/bbolt"

	// The SQLite driver of the Java DB (and of RPM databases), as Trivy's own main imports it.
	_ "modernc.org/sqlite"

	javadb "github.com/aquasecurity/trivy-java-db/pkg/db"
	trivydb "github.com/aquasecurity/trivy/pkg/db"

	"github.com/imageguard/imageguard/internal/registry"
)

const (
	// LayerMediaType is the media type of the one layer of Trivy's DB artifact.
	LayerMediaType = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
	// SchemaVersion is the DB schema this Trivy reads.
	SchemaVersion = 2
	// JavaLayerMediaType is the media type of the one layer of Trivy's Java DB artifact.
	JavaLayerMediaType = "application/vnd.aquasec.trivy.javadb.layer.v1.tar+gzip"
	// JavaSchemaVersion is the Java DB schema this Trivy reads (trivy-java-db's db.SchemaVersion).
	JavaSchemaVersion = javadb.SchemaVersion

	metadataFile = "metadata.json"
	digestFile   = "artifact-digest"
	// sourceFile names the repository the DB was downloaded from.
	sourceFile = "artifact-source"
)

// Artifact is a DB a Manager keeps current: Trivy's vulnerability DB or its Java DB. Both are OCI
// artifacts of one gzip tar layer holding the DB file and metadata.json.
type Artifact struct {
	// Name is what logs and errors call it.
	Name string
	// Folder is its folder under the cache folder.
	Folder string
	// LayerMediaType is the media type of the artifact's one layer.
	LayerMediaType string
	// File is the DB file beside metadata.json.
	File string
	// SchemaVersion is the metadata version this Trivy reads.
	SchemaVersion int
	// DefaultRepositories are the public repositories of the artifact, tried in order.
	DefaultRepositories []string
	// verify checks that the DB file opens and holds what Trivy reads.
	verify func(path string) error
	// open makes the DB in dir the one Trivy reads; close closes it (both nil: the DB is read
	// from its folder by whoever holds it, see Manager.ViewDir).
	open  func(dir string) error
	close func() error
}

// VulnerabilityDB is Trivy's vulnerability DB, opened as Trivy's process-global DB.
var VulnerabilityDB = &Artifact{
	Name: "vulnerability DB", Folder: "db", LayerMediaType: LayerMediaType, File: "trivy.db", SchemaVersion: SchemaVersion,
	DefaultRepositories: []string{"mirror.gcr.io/aquasec/trivy-db:2", "ghcr.io/aquasecurity/trivy-db:2"},
	verify:              verifyBolt, open: func(dir string) error { return trivydb.Init(dir) }, close: trivydb.Close,
}

// JavaDB is Trivy's Java DB (Maven artifacts by SHA-1, for jar files without their Maven
// properties). Analyses read it from its folder (Manager.ViewDir) through Trivy's javadb package.
var JavaDB = &Artifact{
	Name: "Java DB", Folder: "java-db", LayerMediaType: JavaLayerMediaType, File: "trivy-java.db", SchemaVersion: JavaSchemaVersion,
	DefaultRepositories: []string{"mirror.gcr.io/aquasec/trivy-java-db:1", "ghcr.io/aquasecurity/trivy-java-db:1"},
	verify:              verifySQLite,
}

// Metadata is the DB's metadata.json.
type Metadata struct {
	Version      int       `json:"Version"`
	NextUpdate   time.Time `json:"NextUpdate"`
	UpdatedAt    time.Time `json:"UpdatedAt"`
	DownloadedAt time.Time `json:"DownloadedAt"`
}

// download fetches the artifact repo@digest and unpacks its DB layer into dir.
func (m *Manager) download(ctx context.Context, repo, digest, dir string) error {
	tagged, err := m.opts.Registry.ParseReference(repo)
	if err != nil {
		return err
	}
	ref, err := name.NewDigest(tagged.Context().Name()+"@"+digest, nameOptions(tagged)...)
	if err != nil {
		return err
	}
	img, err := remote.Image(ref, m.opts.Registry.RemoteOptions(ctx, ref, m.opts.Keychain)...)
	if err != nil {
		return registry.Classify(fmt.Errorf("fetching the DB artifact: %w", err))
	}
	manifest, err := img.Manifest()
	if err != nil {
		return registry.Classify(fmt.Errorf("reading the DB artifact's manifest: %w", err))
	}
	if len(manifest.Layers) != 1 || string(manifest.Layers[0].MediaType) != m.art.LayerMediaType {
		return registry.Errorf(registry.KindUnsupported, "the artifact is not a Trivy %s: want one layer of media type %s", m.art.Name, m.art.LayerMediaType)
	}
	desc := manifest.Layers[0]
	if desc.Size > m.opts.MaxBytes {
		return registry.Errorf(registry.KindUnsupported, "the DB artifact is %d bytes, more than the limit of %d", desc.Size, m.opts.MaxBytes)
	}
	layer, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return registry.Classify(err)
	}
	// Compressed, not Uncompressed: the media type is not one go-containerregistry decompresses.
	rc, err := layer.Compressed()
	if err != nil {
		return registry.Classify(fmt.Errorf("fetching the DB layer: %w", err))
	}
	defer rc.Close()
	// go-containerregistry verifies the layer's digest once it was read to its end.
	if err := untarDB(io.LimitReader(rc, min(desc.Size, math.MaxInt64-1)+1), dir, m.art.File, m.opts.MaxBytes); err != nil {
		if ctx.Err() != nil {
			return registry.Errorf(registry.KindTimeout, "downloading the DB: %v", ctx.Err())
		}
		return err
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return registry.Errorf(registry.KindUnsupported, "the DB layer does not match its digest: %v", err)
	}
	return nil
}

func nameOptions(ref name.Reference) []name.Option {
	if ref.Context().Scheme() == "http" {
		return []name.Option{name.Insecure}
	}
	return nil
}

// untarDB extracts dbFile and metadata.json from a gzip tar into dir; other entries are skipped,
// and neither file may expand past maxBytes.
func untarDB(r io.Reader, dir, dbFile string, maxBytes int64) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return registry.Errorf(registry.KindUnsupported, "the DB layer is not gzip: %v", err)
	}
	tr := tar.NewReader(zr)
	found := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return registry.Errorf(registry.KindUnsupported, "the DB layer is not a valid tar: %v", err)
		}
		base := filepath.Base(hdr.Name)
		if hdr.Typeflag != tar.TypeReg || (base != dbFile && base != metadataFile) || filepath.Clean(hdr.Name) != base {
			continue
		}
		if err := writeLimited(filepath.Join(dir, base), tr, maxBytes); err != nil {
			return err
		}
		found[base] = true
	}
	for _, f := range []string{dbFile, metadataFile} {
		if !found[f] {
			return registry.Errorf(registry.KindUnsupported, "the DB layer has no %s", f)
		}
	}
	return nil
}

func writeLimited(path string, r io.Reader, maxBytes int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, io.LimitReader(r, min(maxBytes, math.MaxInt64-1)+1))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return registry.Errorf(registry.KindUnsupported, "the DB layer is truncated or corrupt: %v", err)
	}
	if n > maxBytes {
		return registry.Errorf(registry.KindUnsupported, "%s expands to more than %d bytes", filepath.Base(path), maxBytes)
	}
	return nil
}

// verifyDir checks that dir holds a DB of art this Trivy can read: metadata of its schema version
// and a DB file with what Trivy reads.
func verifyDir(art *Artifact, dir string) (_ *Metadata, err error) {
	// bbolt panics on some corrupt pages: a bad DB is an error, not a crash.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s is corrupt: %v", art.File, p)
		}
	}()
	// A local DB (--db-path) is the operator's folder: a FIFO or a device in it would block the
	// reads below, and the start with them, rather than fail.
	if err := regularFile(dir, metadataFile); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, metadataFile))
	if err != nil {
		return nil, err
	}
	meta := &Metadata{}
	if err := json.Unmarshal(raw, meta); err != nil {
		return nil, fmt.Errorf("malformed %s: %w", metadataFile, err)
	}
	if meta.Version != art.SchemaVersion {
		return nil, fmt.Errorf("%s schema version %d, this ImageGuard reads version %d", art.Name, meta.Version, art.SchemaVersion)
	}
	if err := regularFile(dir, art.File); err != nil {
		return nil, err
	}
	if err := art.verify(filepath.Join(dir, art.File)); err != nil {
		return nil, fmt.Errorf("%s: %w", art.File, err)
	}
	return meta, nil
}

// regularFile fails unless dir/name is a regular file (or a link to one).
func regularFile(dir, name string) error {
	fi, err := os.Stat(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", name)
	}
	return nil
}

// verifyBolt checks that path is a BoltDB with the bucket Trivy's detection reads.
func verifyBolt(path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("it does not open as a BoltDB: %w", err)
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("vulnerability")) == nil {
			return errors.New("it has no vulnerability bucket")
		}
		return nil
	})
}

// verifySQLite checks that path is a SQLite DB with the tables Trivy's Java DB client reads, and
// that SQLite finds it intact.
func verifySQLite(path string) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var check string
	if err := db.QueryRowContext(ctx, "PRAGMA quick_check").Scan(&check); err != nil {
		return fmt.Errorf("it does not open as a SQLite DB: %w", err)
	}
	if check != "ok" {
		return fmt.Errorf("SQLite finds it corrupt: %s", check)
	}
	for _, table := range []string{"artifacts", "indices"} {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", table).Scan(&n); err != nil || n != 1 {
			return fmt.Errorf("it has no %s table", table)
		}
	}
	return nil
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
