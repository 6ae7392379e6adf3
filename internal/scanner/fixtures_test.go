package scanner_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/vulndb"
)

// advisories is the fixture DB: each fixture image below has exactly the findings these imply.
const advisories = `
updatedAt: 2026-11-01T00:00:00Z
advisories:
- {id: CVE-2026-1001, ecosystem: alpine 3.22, package: openssl, fixedVersion: 3.5.2-r0, severity: CRITICAL, title: openssl overflow}
- {id: CVE-2026-1002, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r10, severity: HIGH}
- {id: CVE-2026-2001, ecosystem: debian 12, package: openssl, fixedVersion: 3.0.17-1~deb12u1, severity: HIGH}
- {id: CVE-2026-2002, ecosystem: debian 12, package: zlib, severity: MEDIUM}
- {id: GHSA-35jh-r3h4-6jhm, ecosystem: "npm::GitHub Security Advisory npm", package: lodash, vulnerableVersions: ["<4.17.21"], patchedVersions: ["4.17.21"], severity: HIGH}
- {id: GHSA-xvch-5gv4-984h, ecosystem: "npm::GitHub Security Advisory npm", package: minimist, vulnerableVersions: ["<1.2.6"], patchedVersions: ["1.2.6"], severity: CRITICAL}
- {id: CVE-2022-32149, ecosystem: "go::GitHub Security Advisory Go", package: golang.org/x/text, vulnerableVersions: ["<0.3.8"], patchedVersions: ["0.3.8"], severity: HIGH}
`

// must returns v, or panics with err: for fixtures built at the start of a test.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func alpineImage(t testing.TB) v1.Image {
	return must(testutil.AlpineImage("3.22.1", []testutil.APKPackage{
		{Name: "libcrypto3", Version: "3.5.1-r0", Origin: "openssl"},
		{Name: "busybox", Version: "1.37.0-r18"},
		{Name: "zlib", Version: "1.3.1-r2"},
	}))
}

func debianImage(t testing.TB) v1.Image {
	return must(testutil.DebianImage("12.11", []testutil.DebPackage{
		{Name: "libssl3", Version: "3.0.15-1~deb12u1", Source: "openssl"},
		{Name: "openssl", Version: "3.0.15-1~deb12u1"},
		{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"},
	}))
}

func npmImage(t testing.TB) v1.Image {
	return must(testutil.NPMImage(nil, []testutil.NPMPackage{
		{Name: "lodash", Version: "4.17.20"},
		{Name: "minimist", Version: "1.2.8"},
	}))
}

// fixture is a registry, a loaded fixture DB and a scanner reaching that registry.
type fixture struct {
	reg     *testutil.Registry
	db      *vulndb.Manager
	client  *registry.Client
	scanner *scanner.Scanner
	cache   string
}

func newFixture(t testing.TB, opts ...testutil.RegistryOption) *fixture {
	t.Helper()
	return newFixtureWithDB(t, must(testutil.ParseAdvisories([]byte(advisories))), opts...)
}

// newFixtureWithDB is newFixture with the DB built from spec.
func newFixtureWithDB(t testing.TB, spec *testutil.DBSpec, opts ...testutil.RegistryOption) *fixture {
	t.Helper()
	dbDir := t.TempDir()
	if err := testutil.BuildDB(dbDir, spec); err != nil {
		t.Fatal(err)
	}
	return newFixtureOfDB(t, filepath.Join(dbDir, "db"), opts...)
}

// newFixtureOfDB is newFixture with the DB in dbDir (holding trivy.db and metadata.json).
func newFixtureOfDB(t testing.TB, dbDir string, opts ...testutil.RegistryOption) *fixture {
	t.Helper()
	f := &fixture{reg: testutil.NewRegistry(t, opts...), cache: t.TempDir()}
	f.db = must(vulndb.New(vulndb.Options{LocalPath: dbDir, Log: logr.Discard()}))
	if err := f.db.LoadLocal(); err != nil {
		t.Fatal(err)
	}
	f.client = registry.NewClient(registry.Options{InsecureHosts: []string{f.reg.Host()}})
	f.scanner = f.newScanner(t, scanner.Options{})
	return f
}

func (f *fixture) newScanner(t testing.TB, opts scanner.Options) *scanner.Scanner {
	t.Helper()
	if opts.CacheDir == "" {
		opts.CacheDir = f.cache
	}
	return must(scanner.New(opts, f.client, f.db))
}

// push uploads img and returns its ImageRef.
func (f *fixture) push(t testing.TB, repo string, img v1.Image) scanner.ImageRef {
	t.Helper()
	_, digest := f.reg.Push(t, repo, "1.0", img)
	return scanner.ImageRef{Repository: f.reg.Host() + "/" + repo, Digest: digest.String()}
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
