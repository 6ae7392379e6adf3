package testutil

import (
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	javadb "github.com/aquasecurity/trivy-java-db/pkg/db"
	javatypes "github.com/aquasecurity/trivy-java-db/pkg/types"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	// The SQLite driver trivy-java-db's database/sql code opens its DB with.
	_ "modernc.org/sqlite"
)

// JavaDBLayerMediaType is the layer media type of Trivy's Java DB artifact.
const JavaDBLayerMediaType types.MediaType = "application/vnd.aquasec.trivy.javadb.layer.v1.tar+gzip"

// JavaArtifact is a Maven artifact the Java DB knows by the SHA-1 of its jar.
type JavaArtifact struct {
	GroupID, ArtifactID, Version string
	// SHA1 is the hex SHA-1 of the jar file.
	SHA1 string
}

// BuildJavaDB writes a Java DB of artifacts to dir (trivy-java.db and metadata.json) with
// trivy-java-db's own API, as its builder does, stamped updatedAt.
func BuildJavaDB(dir string, updatedAt time.Time, artifacts []JavaArtifact) error {
	db, err := javadb.New(dir)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.Init(); err != nil {
		return err
	}
	indexes := make([]javatypes.Index, 0, len(artifacts))
	for _, a := range artifacts {
		sha1, err := hex.DecodeString(a.SHA1)
		if err != nil {
			return fmt.Errorf("java artifact %s:%s: SHA-1: %w", a.GroupID, a.ArtifactID, err)
		}
		indexes = append(indexes, javatypes.Index{GroupID: a.GroupID, ArtifactID: a.ArtifactID, Version: a.Version, SHA1: sha1, ArchiveType: javatypes.JarType})
	}
	if err := db.InsertIndexes(indexes); err != nil {
		return err
	}
	meta := javadb.NewMetadata(dir)
	return meta.Update(javadb.Metadata{
		Version: javadb.SchemaVersion, UpdatedAt: updatedAt.UTC(), NextUpdate: updatedAt.UTC().Add(72 * time.Hour),
	})
}

// JavaDBArchive returns the gzip tar Trivy's Java DB artifact carries: trivy-java.db and
// metadata.json of dir at its root.
func JavaDBArchive(dir string) ([]byte, error) {
	return archiveOf(dir, "trivy-java.db", "metadata.json")
}

// JavaDBArtifact wraps a JavaDBArchive in the OCI artifact Trivy downloads (as DBArtifact does).
func JavaDBArtifact(archive []byte) (v1.Image, error) {
	return oneArchiveArtifact(archive, JavaDBLayerMediaType, "javadb.tar.gz")
}

// PublishJavaDB builds a Java DB of artifacts, wraps it as Trivy's artifact and pushes it as
// <host>/<repo>:<tag>, returning the manifest digest.
func (r *Registry) PublishJavaDB(t testing.TB, repo, tag string, updatedAt time.Time, artifacts []JavaArtifact) v1.Hash {
	t.Helper()
	dir := t.TempDir()
	if err := BuildJavaDB(dir, updatedAt, artifacts); err != nil {
		t.Fatalf("build Java DB: %v", err)
	}
	archive, err := JavaDBArchive(dir)
	if err != nil {
		t.Fatalf("archive Java DB: %v", err)
	}
	img, err := JavaDBArtifact(archive)
	if err != nil {
		t.Fatalf("Java DB artifact: %v", err)
	}
	_, digest := r.Push(t, repo, tag, img)
	return digest
}
