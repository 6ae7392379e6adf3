package vulndb

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
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

	"github.com/imageguard/imageguard/internal/registry"
)

const (
	// LayerMediaType is the media type of the one layer of Trivy's DB artifact.
	LayerMediaType = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
	// SchemaVersion is the DB schema this Trivy reads.
	SchemaVersion = 2

	dbFile       = "trivy.db"
	metadataFile = "metadata.json"
	digestFile   = "artifact-digest"
	// sourceFile names the repository the DB was downloaded from.
	sourceFile = "artifact-source"
)

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
	if len(manifest.Layers) != 1 || string(manifest.Layers[0].MediaType) != LayerMediaType {
		return registry.Errorf(registry.KindUnsupported, "the artifact is not a Trivy DB: want one layer of media type %s", LayerMediaType)
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
	if err := untarDB(io.LimitReader(rc, min(desc.Size, math.MaxInt64-1)+1), dir, m.opts.MaxBytes); err != nil {
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

// untarDB extracts trivy.db and metadata.json from a gzip tar into dir; other entries are
// skipped, and neither file may expand past maxBytes.
func untarDB(r io.Reader, dir string, maxBytes int64) error {
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

// verifyDir checks that dir holds a DB this Trivy can read: metadata of schema version 2 and a
// BoltDB with the buckets detection reads.
func verifyDir(dir string) (_ *Metadata, err error) {
	// bbolt panics on some corrupt pages: a bad DB is an error, not a crash.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s is corrupt: %v", dbFile, p)
		}
	}()
	raw, err := os.ReadFile(filepath.Join(dir, metadataFile))
	if err != nil {
		return nil, err
	}
	meta := &Metadata{}
	if err := json.Unmarshal(raw, meta); err != nil {
		return nil, fmt.Errorf("malformed %s: %w", metadataFile, err)
	}
	if meta.Version != SchemaVersion {
		return nil, fmt.Errorf("schema version %d, this ImageGuard reads version %d", meta.Version, SchemaVersion)
	}
	db, err := bolt.Open(filepath.Join(dir, dbFile), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("%s does not open as a BoltDB: %w", dbFile, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("vulnerability")) == nil {
			return errors.New("it has no vulnerability bucket")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dbFile, err)
	}
	return meta, nil
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
