package vulndb_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/vulndb"
)

const dbV1 = `
updatedAt: 2026-11-01T00:00:00Z
advisories:
- {id: CVE-2026-1001, ecosystem: alpine 3.22, package: openssl, fixedVersion: 3.5.2-r0, severity: CRITICAL}
`

// dbV2 adds an advisory for busybox.
const dbV2 = `
updatedAt: 2026-11-02T00:00:00Z
advisories:
- {id: CVE-2026-1001, ecosystem: alpine 3.22, package: openssl, fixedVersion: 3.5.2-r0, severity: CRITICAL}
- {id: CVE-2026-1003, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r20, severity: HIGH}
`

// must returns v, or panics with err: for fixtures built at the start of a test.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func spec(t testing.TB, y string) *testutil.DBSpec {
	return must(testutil.ParseAdvisories([]byte(y)))
}

type fixture struct {
	reg     *testutil.Registry
	client  *registry.Client
	db      *vulndb.Manager
	scanner *scanner.Scanner
	image   scanner.ImageRef
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{reg: testutil.NewRegistry(t)}
	f.client = registry.NewClient(registry.Options{InsecureHosts: []string{f.reg.Host()}})
	f.db = must(vulndb.New(vulndb.Options{
		Repositories:  []string{f.reg.Host() + "/aquasecurity/trivy-db:2"},
		CacheDir:      t.TempDir(),
		CheckInterval: time.Hour,
		Registry:      f.client,
		Log:           logr.Discard(),
	}))
	f.scanner = must(scanner.New(scanner.Options{CacheDir: t.TempDir()}, f.client, f.db))
	img := must(testutil.AlpineImage("3.22.1", []testutil.APKPackage{
		{Name: "libcrypto3", Version: "3.5.1-r0", Origin: "openssl"},
		{Name: "busybox", Version: "1.37.0-r18"},
	}))
	_, digest := f.reg.Push(t, "team/app", "1.0", img)
	f.image = scanner.ImageRef{Repository: f.reg.Host() + "/team/app", Digest: digest.String()}
	t.Cleanup(func() { _ = f.db.Close() })
	return f
}

func (f *fixture) findingIDs(t *testing.T, inv *scanner.Inventory) []string {
	t.Helper()
	res, err := f.scanner.Match(context.Background(), inv)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, finding := range res.Findings {
		ids = append(ids, finding.ID)
	}
	return ids
}

func TestNoDBBeforeTheFirstDownload(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	err := f.db.View(func(scanner.DBInfo) error { return nil })
	g.Expect(err).To(MatchError(vulndb.ErrNoDB))
}

func TestCheckDownloadsOnlyWhenTheDigestChanges(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	ctx := context.Background()
	updates := f.db.Subscribe()

	v1Digest := f.reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV1))
	swapped, err := f.db.Check(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(swapped).To(BeTrue())
	info, ok := f.db.Info()
	g.Expect(ok).To(BeTrue())
	g.Expect(info.Digest).To(Equal(v1Digest.String()))
	g.Expect(info.UpdatedAt).To(Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)))
	g.Expect(updates).To(Receive(Equal(event.TypedGenericEvent[scanner.DBInfo]{Object: info})))

	// Unchanged: one manifest HEAD, nothing downloaded, no notification.
	f.reg.ResetCounts()
	swapped, err = f.db.Check(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(swapped).To(BeFalse())
	counts := f.reg.Counts()
	g.Expect(counts.ManifestHEADs).To(Equal(1))
	g.Expect(counts.ManifestGETs + counts.BlobGETs).To(BeZero())
	g.Expect(updates).NotTo(Receive())
}

func TestRematchAfterASwapNeedsNoRegistry(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	ctx := context.Background()
	f.reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV1))
	g.Expect(f.db.Check(ctx)).To(BeTrue())

	inv, analysed, err := f.scanner.Inventory(ctx, f.image)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(analysed).To(BeTrue())
	g.Expect(f.findingIDs(t, inv)).To(Equal([]string{"CVE-2026-1001"}))

	f.reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV2))
	g.Expect(f.db.Check(ctx)).To(BeTrue())
	f.reg.ResetCounts()
	inv, analysed, err = f.scanner.Inventory(ctx, f.image)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(analysed).To(BeFalse())
	g.Expect(f.findingIDs(t, inv)).To(Equal([]string{"CVE-2026-1001", "CVE-2026-1003"}))
	g.Expect(f.reg.Counts().Requests).To(BeZero())
}

// artifact returns a one-layer artifact with the given layer bytes and media type.
func artifact(t *testing.T, layer []byte, mediaType types.MediaType) v1.Image {
	return must(testutil.OneLayerArtifact(layer, mediaType))
}

func TestOldDBKeepsServingWhenTheNewOneIsBad(t *testing.T) {
	good := func(t *testing.T) []byte {
		dir := t.TempDir()
		if err := testutil.BuildDB(dir, spec(t, dbV2)); err != nil {
			t.Fatal(err)
		}
		return must(testutil.DBArchive(filepath.Join(dir, "db")))
	}
	tests := map[string]struct {
		publish func(t *testing.T, f *fixture)
		wantErr string
	}{
		"a corrupt artifact": {
			publish: func(t *testing.T, f *fixture) {
				f.reg.Push(t, "aquasecurity/trivy-db", "2", artifact(t, []byte("not a gzip stream"), testutil.DBLayerMediaType))
			},
			wantErr: "not gzip",
		},
		"a truncated artifact": {
			publish: func(t *testing.T, f *fixture) {
				archive := good(t)
				f.reg.Push(t, "aquasecurity/trivy-db", "2", artifact(t, archive[:len(archive)/2], testutil.DBLayerMediaType))
			},
			wantErr: "UnsupportedImage",
		},
		"the wrong media type": {
			publish: func(t *testing.T, f *fixture) {
				f.reg.Push(t, "aquasecurity/trivy-db", "2", artifact(t, good(t), types.OCILayer))
			},
			wantErr: "not a Trivy vulnerability DB",
		},
		"a DB of another schema": {
			publish: func(t *testing.T, f *fixture) {
				dir := t.TempDir()
				if err := testutil.BuildDB(dir, spec(t, dbV2)); err != nil {
					t.Fatal(err)
				}
				meta := filepath.Join(dir, "db", "metadata.json")
				raw := must(os.ReadFile(meta))
				raw = bytes.Replace(raw, []byte(`"Version":2`), []byte(`"Version":1`), 1)
				if err := os.WriteFile(meta, raw, 0o644); err != nil {
					t.Fatal(err)
				}
				archive := must(testutil.DBArchive(filepath.Join(dir, "db")))
				f.reg.Push(t, "aquasecurity/trivy-db", "2", must(testutil.DBArtifact(archive)))
			},
			wantErr: "schema version 1",
		},
		"the registry is down": {
			publish: func(t *testing.T, f *fixture) {
				f.reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV2))
				f.reg.SetFault(testutil.StatusFault(http.StatusServiceUnavailable))
			},
			wantErr: "UNAVAILABLE",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			f := newFixture(t)
			ctx := context.Background()
			f.reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV1))
			g.Expect(f.db.Check(ctx)).To(BeTrue())
			before, _ := f.db.Info()
			inv, _, err := f.scanner.Inventory(ctx, f.image)
			g.Expect(err).NotTo(HaveOccurred())

			tt.publish(t, f)
			swapped, err := f.db.Check(ctx)
			g.Expect(err).To(MatchError(ContainSubstring(tt.wantErr)))
			g.Expect(swapped).To(BeFalse())
			g.Expect(f.db.LastError()).To(HaveOccurred())
			after, ok := f.db.Info()
			g.Expect(ok).To(BeTrue())
			g.Expect(after).To(Equal(before))
			g.Expect(f.findingIDs(t, inv)).To(Equal([]string{"CVE-2026-1001"}))
		})
	}
}

func TestRepositoriesAreTriedInOrder(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t)
	client := registry.NewClient(registry.Options{InsecureHosts: []string{reg.Host()}})
	digest := reg.PublishDB(t, "mirror/trivy-db", "2", spec(t, dbV1))
	db := must(vulndb.New(vulndb.Options{
		Repositories: []string{reg.Host() + "/missing/trivy-db:2", reg.Host() + "/mirror/trivy-db:2"},
		CacheDir:     t.TempDir(),
		Registry:     client,
		Log:          logr.Discard(),
	}))
	t.Cleanup(func() { _ = db.Close() })
	g.Expect(db.Check(context.Background())).To(BeTrue())
	info, _ := db.Info()
	g.Expect(info.Digest).To(Equal(digest.String()))
}

func TestARestartServesTheDownloadedDB(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t)
	client := registry.NewClient(registry.Options{InsecureHosts: []string{reg.Host()}})
	digest := reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV1))
	opts := vulndb.Options{
		Repositories: []string{reg.Host() + "/aquasecurity/trivy-db:2"},
		CacheDir:     t.TempDir(),
		Registry:     client,
		Log:          logr.Discard(),
	}
	first := must(vulndb.New(opts))
	g.Expect(first.Check(context.Background())).To(BeTrue())
	g.Expect(first.Close()).To(Succeed())

	// The registry is gone; the cached DB serves at once.
	reg.SetFault(testutil.StatusFault(http.StatusServiceUnavailable))
	second, stop := startUntilServing(t, opts)
	info, _ := second.Info()
	g.Expect(info.Digest).To(Equal(digest.String()))
	stop()
}

// TestARestartCleansAnInterruptedSwap starts on the leftovers of processes that died during a
// download and between the two renames of a swap: the download folder is removed and the old DB,
// moved aside, is put back and served while the registry is down.
func TestARestartCleansAnInterruptedSwap(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t)
	client := registry.NewClient(registry.Options{InsecureHosts: []string{reg.Host()}})
	digest := reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV1))
	cache := t.TempDir()
	opts := vulndb.Options{
		Repositories: []string{reg.Host() + "/aquasecurity/trivy-db:2"},
		CacheDir:     cache, Registry: client, Log: logr.Discard(),
	}
	first := must(vulndb.New(opts))
	g.Expect(first.Check(context.Background())).To(BeTrue())
	g.Expect(first.Close()).To(Succeed())

	// The state a SIGKILL leaves: a half download, and the current DB moved aside.
	dbDir := filepath.Join(cache, "db")
	g.Expect(os.MkdirAll(filepath.Join(dbDir, ".download-123", "x"), 0o750)).To(Succeed())
	g.Expect(os.Rename(filepath.Join(dbDir, "current"), filepath.Join(dbDir, "current.old"))).To(Succeed())

	reg.SetFault(testutil.StatusFault(http.StatusServiceUnavailable))
	second, stop := startUntilServing(t, opts)
	info, _ := second.Info()
	g.Expect(info.Digest).To(Equal(digest.String()))
	stop()
	entries := must(os.ReadDir(dbDir))
	names := []string{}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	g.Expect(names).To(ConsistOf("current"))

	// A swap that finished but left the old DB aside: the old one is removed.
	g.Expect(os.MkdirAll(filepath.Join(dbDir, "current.old"), 0o750)).To(Succeed())
	_, stop = startUntilServing(t, opts)
	stop()
	g.Expect(filepath.Join(dbDir, "current.old")).NotTo(BeADirectory())
}

// TestADBThatCrashedTwiceIsSkipped starts where two processes died downloading the same DB
// digest: the third does not download it again, says why, and the DB in use keeps serving.
func TestADBThatCrashedTwiceIsSkipped(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t)
	client := registry.NewClient(registry.Options{InsecureHosts: []string{reg.Host()}})
	first := reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV1))
	cache := t.TempDir()
	opts := vulndb.Options{Repositories: []string{reg.Host() + "/aquasecurity/trivy-db:2"}, CacheDir: cache, Registry: client, Log: logr.Discard()}
	db := must(vulndb.New(opts))
	t.Cleanup(func() { _ = db.Close() })
	g.Expect(db.Check(context.Background())).To(BeTrue())

	next := reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV2))
	mark := fmt.Sprintf(`{"digest":%q,"attempts":2,"lastStart":%q}`, next.String(), time.Now().UTC().Format(time.RFC3339))
	g.Expect(os.WriteFile(filepath.Join(cache, "db", "downloading-"+must(scanner.DigestFileName(next.String()))), []byte(mark), 0o600)).To(Succeed())
	reg.ResetCounts()
	_, err := db.Check(context.Background())
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindAnalysisCrashed), "%v", err)
	g.Expect(err).To(MatchError(ContainSubstring("stopped the controller 2 times")))
	g.Expect(reg.Counts().BlobGETs).To(BeZero())
	info, _ := db.Info()
	g.Expect(info.Digest).To(Equal(first.String()))

	// Once per crash otherwise: a mark of one attempt is retried, and cleared by the download.
	g.Expect(os.WriteFile(filepath.Join(cache, "db", "downloading-"+must(scanner.DigestFileName(next.String()))), []byte(strings.Replace(mark, `"attempts":2`, `"attempts":1`, 1)), 0o600)).To(Succeed())
	g.Expect(db.Check(context.Background())).To(BeTrue())
	g.Expect(filepath.Join(cache, "db", "downloading-"+must(scanner.DigestFileName(next.String())))).NotTo(BeAnExistingFile())
}

// startUntilServing starts a Manager of opts as the controller does and waits until it serves a
// DB; stop ends it and checks that Start returned no error.
func startUntilServing(t *testing.T, opts vulndb.Options) (*vulndb.Manager, func()) {
	g := NewWithT(t)
	m := must(vulndb.New(opts))
	t.Cleanup(func() { _ = m.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Start(ctx) }()
	g.Eventually(func() bool { _, ok := m.Info(); return ok }).Should(BeTrue())
	return m, func() {
		cancel()
		g.Eventually(done).Should(Receive(BeNil()))
	}
}

// TestOpenReusesTheKeptDB runs two one-shot loads (what `imageguard scan` does) on one cache: the
// second costs one manifest request and downloads nothing; with the registry down it serves the
// kept DB and says why it could not check.
func TestOpenReusesTheKeptDB(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	reg := testutil.NewRegistry(t)
	client := registry.NewClient(registry.Options{InsecureHosts: []string{reg.Host()}})
	digest := reg.PublishDB(t, "aquasecurity/trivy-db", "2", spec(t, dbV1))
	opts := vulndb.Options{
		Repositories: []string{reg.Host() + "/aquasecurity/trivy-db:2"}, CacheDir: t.TempDir(),
		Registry: client, Log: logr.Discard(),
	}
	open := func() *vulndb.Manager {
		m := must(vulndb.New(opts))
		g.Expect(m.Open(ctx)).To(Succeed())
		info, ok := m.Info()
		g.Expect(ok).To(BeTrue())
		g.Expect(info.Digest).To(Equal(digest.String()))
		return m
	}
	g.Expect(open().Close()).To(Succeed())
	g.Expect(reg.Counts().BlobGETs).To(BeNumerically(">", 0))

	reg.ResetCounts()
	second := open()
	g.Expect(second.LastError()).NotTo(HaveOccurred())
	counts := reg.Counts()
	g.Expect(counts.ManifestHEADs + counts.ManifestGETs).To(Equal(1))
	g.Expect(counts.BlobGETs).To(BeZero())
	g.Expect(second.Close()).To(Succeed())

	reg.SetFault(testutil.StatusFault(http.StatusServiceUnavailable))
	third := open()
	g.Expect(third.LastError()).To(HaveOccurred())
	g.Expect(third.Close()).To(Succeed())

	// No kept DB and no registry: an error.
	empty := opts
	empty.CacheDir = t.TempDir()
	g.Expect(must(vulndb.New(empty)).Open(ctx)).To(HaveOccurred())
}

// A local DB whose file is not a regular one (a FIFO, which would block its read) is an error at
// once, not a start that hangs.
func TestALocalDBMustBeARegularFile(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	g.Expect(testutil.BuildDB(dir, spec(t, dbV1))).To(Succeed())
	local := filepath.Join(dir, "db")
	g.Expect(os.Remove(filepath.Join(local, "metadata.json"))).To(Succeed())
	g.Expect(syscall.Mkfifo(filepath.Join(local, "metadata.json"), 0o600)).To(Succeed())
	m := must(vulndb.New(vulndb.Options{LocalPath: local, CacheDir: t.TempDir(), Log: logr.Discard()}))
	g.Expect(m.Open(context.Background())).To(MatchError(ContainSubstring("metadata.json is not a regular file")))
}

// TestALocalDBIsHashedOnce loads a local DB (--db-path) three times on one cache: its digest is
// computed once and kept; a DB file that changes is hashed again.
func TestALocalDBIsHashedOnce(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	g.Expect(testutil.BuildDB(dir, spec(t, dbV1))).To(Succeed())
	local := filepath.Join(dir, "db")
	opts := vulndb.Options{LocalPath: local, CacheDir: t.TempDir(), Log: logr.Discard()}
	load := func() string {
		m := must(vulndb.New(opts))
		g.Expect(m.Open(context.Background())).To(Succeed())
		info, _ := m.Info()
		g.Expect(m.Close()).To(Succeed())
		return info.Digest
	}
	before := vulndb.HashedFiles.Load()
	first := load()
	g.Expect(first).To(HavePrefix("sha256:"))
	g.Expect(load()).To(Equal(first))
	g.Expect(vulndb.HashedFiles.Load() - before).To(BeEquivalentTo(1))

	// The DB is replaced: another digest, hashed again.
	g.Expect(testutil.BuildDB(dir, spec(t, dbV2))).To(Succeed())
	later := time.Now().Add(time.Minute)
	g.Expect(os.Chtimes(filepath.Join(local, "trivy.db"), later, later)).To(Succeed())
	g.Expect(load()).NotTo(Equal(first))
	g.Expect(vulndb.HashedFiles.Load() - before).To(BeEquivalentTo(2))
}
