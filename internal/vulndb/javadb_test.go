package vulndb_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/vulndb"
)

var log4jCore = testutil.JavaArtifact{GroupID: "org.apache.logging.log4j", ArtifactID: "log4j-core", Version: "2.19.0", SHA1: "3b2dcf8c9ad2d3d4dc5a09a6bd9e3c7b8bd1ef39"}

// The Java DB is kept by the same Manager as the vulnerability DB: on demand it downloads nothing
// until Want, then once; a newer artifact swaps in without a restart; a corrupt one keeps the
// old; a local folder serves offline.
func TestTheJavaDBIsManagedLikeTheVulnerabilityDB(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t)
	client := registry.NewClient(registry.Options{InsecureHosts: []string{reg.Host()}})
	v1 := reg.PublishJavaDB(t, "aquasecurity/trivy-java-db", "1", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), []testutil.JavaArtifact{log4jCore})
	cache := t.TempDir()
	opts := vulndb.Options{
		Artifact: vulndb.JavaDB, OnDemand: true, Repositories: []string{reg.Host() + "/aquasecurity/trivy-java-db:1"},
		CacheDir: cache, CheckInterval: time.Hour, Registry: client, Log: logr.Discard(),
	}
	m := must(vulndb.New(opts))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Start(ctx) }()
	stop := func() {
		cancel()
		g.Eventually(done).Should(Receive(BeNil()))
	}

	// Nothing is asked of the registry until an image needs the DB.
	reg.ResetCounts()
	g.Consistently(func() int { return reg.Counts().Requests }).WithTimeout(300 * time.Millisecond).Should(BeZero())
	g.Expect(dirOf(m)).To(BeEmpty())

	m.Want()
	var dir string
	g.Eventually(func() string { dir = dirOf(m); return dir }).ShouldNot(BeEmpty())
	g.Expect(filepath.Join(dir, "trivy-java.db")).To(BeARegularFile())
	info, _ := m.Info()
	g.Expect(info.Digest).To(Equal(v1.String()))
	g.Expect(m.State().Source).To(Equal(reg.Host() + "/aquasecurity/trivy-java-db:1"))
	m.Want() // already loaded: no second download
	g.Expect(m.Check(context.Background())).To(BeFalse())

	// A newer artifact swaps in; a corrupt one keeps it.
	v2 := reg.PublishJavaDB(t, "aquasecurity/trivy-java-db", "1", time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), []testutil.JavaArtifact{log4jCore})
	g.Expect(m.Check(context.Background())).To(BeTrue())
	info, _ = m.Info()
	g.Expect(info.Digest).To(Equal(v2.String()))
	corruptDir := t.TempDir()
	g.Expect(testutil.BuildJavaDB(corruptDir, time.Now(), nil)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(corruptDir, "trivy-java.db"), []byte("SQLite format 3\x00 but not really"), 0o644)).To(Succeed())
	reg.Push(t, "aquasecurity/trivy-java-db", "1", must(testutil.JavaDBArtifact(must(testutil.JavaDBArchive(corruptDir)))))
	swapped, err := m.Check(context.Background())
	g.Expect(swapped).To(BeFalse())
	g.Expect(err).To(MatchError(ContainSubstring("trivy-java.db")))
	info, _ = m.Info()
	g.Expect(info.Digest).To(Equal(v2.String()), "the corrupt DB did not replace the good one")
	stop()

	// A restart serves the kept DB at once, and keeps it current: on demand no more.
	reg.ResetCounts()
	m2, stop2 := startUntilServing(t, opts)
	info, _ = m2.Info()
	g.Expect(info.Digest).To(Equal(v2.String()))
	stop2()

	// The vulnerability DB of the manifest's media type is not a Java DB.
	wrong := opts
	wrong.CacheDir, wrong.OnDemand = t.TempDir(), false
	reg.PublishDB(t, "aquasecurity/trivy-java-db", "1", spec(t, dbV1))
	_, err = must(vulndb.New(wrong)).Check(context.Background())
	g.Expect(err).To(MatchError(ContainSubstring("not a Trivy Java DB")))
}

// dirOf returns the folder of m's DB in use, as an analysis sees it (ViewDir); "" when none.
func dirOf(m *vulndb.Manager) string {
	var out string
	_ = m.ViewDir(func(dir string) error { out = dir; return nil })
	return out
}

func TestALocalJavaDBNeverDownloads(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	g.Expect(testutil.BuildJavaDB(dir, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), []testutil.JavaArtifact{log4jCore})).To(Succeed())
	m := must(vulndb.New(vulndb.Options{Artifact: vulndb.JavaDB, LocalPath: dir, CacheDir: t.TempDir(), Log: logr.Discard()}))
	g.Expect(m.LoadLocal()).To(Succeed())
	g.Expect(dirOf(m)).To(Equal(dir))
	g.Expect(m.State().Info.UpdatedAt).To(Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)))

	// A folder that holds a vulnerability DB instead is refused, with the reason.
	other := t.TempDir()
	g.Expect(testutil.BuildDB(other, spec(t, dbV1))).To(Succeed())
	bad := must(vulndb.New(vulndb.Options{Artifact: vulndb.JavaDB, LocalPath: filepath.Join(other, "db"), Log: logr.Discard()}))
	g.Expect(bad.LoadLocal()).To(MatchError(ContainSubstring("Java DB schema version 2")))
}
