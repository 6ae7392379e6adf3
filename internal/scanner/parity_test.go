package scanner_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	trivydb "github.com/aquasecurity/trivy-db/pkg/db"
	dbTypes "github.com/aquasecurity/trivy-db/pkg/types"
	"github.com/aquasecurity/trivy/pkg/cache"
	"github.com/aquasecurity/trivy/pkg/fanal/analyzer"
	"github.com/aquasecurity/trivy/pkg/fanal/applier"
	"github.com/aquasecurity/trivy/pkg/fanal/artifact"
	imageartifact "github.com/aquasecurity/trivy/pkg/fanal/artifact/image"
	"github.com/aquasecurity/trivy/pkg/fanal/image"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/result"
	"github.com/aquasecurity/trivy/pkg/scan/langpkg"
	"github.com/aquasecurity/trivy/pkg/scan/local"
	"github.com/aquasecurity/trivy/pkg/scan/ospkg"
	"github.com/aquasecurity/trivy/pkg/types"
	"github.com/aquasecurity/trivy/pkg/vex"
	"github.com/aquasecurity/trivy/pkg/vulnerability"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
)

// cliScanOptions and cliFilterOptions are what `trivy image --scanners vuln` uses, spelled out here
// apart from the scanner's own so that a drift in either shows.
var (
	cliScanOptions = types.ScanOptions{
		PkgTypes:            []string{types.PkgTypeOS, types.PkgTypeLibrary},
		PkgRelationships:    ftypes.Relationships,
		Scanners:            types.Scanners{types.VulnerabilityScanner},
		VulnSeveritySources: []dbTypes.SourceID{"auto"},
	}
	cliFilterOptions = result.FilterOptions{Severities: []dbTypes.Severity{
		dbTypes.SeverityCritical, dbTypes.SeverityHigh, dbTypes.SeverityMedium, dbTypes.SeverityLow, dbTypes.SeverityUnknown,
	}}
)

// trivyCLIDisabledAnalyzers are the analyzers `trivy image --scanners vuln` leaves off for images.
func trivyCLIDisabledAnalyzers() []analyzer.Type {
	disabled := append([]analyzer.Type{}, analyzer.TypeLockfiles...)
	disabled = append(disabled, analyzer.TypeConfigFiles...)
	return append(disabled, analyzer.TypeApkCommand, analyzer.TypeSecret, analyzer.TypeLicenseFile,
		analyzer.TypeHistoryDockerfile, analyzer.TypeExecutable, analyzer.TypeRpmArchive)
}

// trivyImage runs what `trivy image` runs on ref before it formats a report: Trivy's own remote
// image, its CLI's analyzer choice for images and Service.Scan with opts; the report carries the
// name and metadata Trivy gives the image (from which its PURL is made).
func trivyImage(ctx context.Context, t *testing.T, ref string, opts types.ScanOptions) types.Report {
	t.Helper()
	img, cleanup, err := image.NewContainerImage(ctx, ref, ftypes.ImageOptions{
		RegistryOptions: ftypes.RegistryOptions{Insecure: true},
		ImageSources:    ftypes.ImageSources{ftypes.RemoteImageSource},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	blobs := cache.NewMemoryCache()
	art, err := imageartifact.NewArtifact(img, blobs, artifact.Option{DisabledAnalyzers: trivyCLIDisabledAnalyzers(), NoProgress: true})
	if err != nil {
		t.Fatal(err)
	}
	artRef, err := art.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	svc := local.NewService(applier.NewApplier(blobs), ospkg.NewScanner(), langpkg.NewScanner(), vulnerability.NewClient(trivydb.Config{}))
	resp, err := svc.Scan(ctx, artRef.Name, artRef.ID, artRef.BlobIDs, opts)
	if err != nil {
		t.Fatal(err)
	}
	return types.Report{SchemaVersion: 2, ArtifactName: artRef.Name, ArtifactType: artRef.Type, Results: resp.Results,
		Metadata: types.Metadata{OS: &resp.OS, ImageID: artRef.ImageMetadata.ID, DiffIDs: artRef.ImageMetadata.DiffIDs,
			RepoTags: artRef.ImageMetadata.RepoTags, RepoDigests: artRef.ImageMetadata.RepoDigests,
			ImageConfig: artRef.ImageMetadata.ConfigFile}}
}

// trivyImageScan scans ref the way `trivy image --scanners vuln` does: trivyImage, then the result
// filter; it keeps the fields users compare (cliFields).
func trivyImageScan(ctx context.Context, t *testing.T, f *fixture, ref string) []scanner.Finding {
	t.Helper()
	return trivyImageVEX(ctx, t, f, ref, nil)
}

// trivyImageVEX is `trivy image --scanners vuln --vex FILE... REF`: trivyImageScan with the
// documents as the result filter's VEX sources.
func trivyImageVEX(ctx context.Context, t *testing.T, f *fixture, ref string, files []string) []scanner.Finding {
	t.Helper()
	var findings []scanner.Finding
	err := f.db.View(func(scanner.DBInfo) error {
		report := trivyImage(ctx, t, ref, cliScanOptions)
		opts := cliFilterOptions
		for _, file := range files {
			opts.VEXSources = append(opts.VEXSources, vex.Source{Type: vex.TypeFile, FilePath: file})
		}
		if err := result.Filter(ctx, report, opts); err != nil {
			return err
		}
		for _, r := range report.Results {
			for _, v := range r.Vulnerabilities {
				findings = append(findings, scanner.Finding{
					ID: v.VulnerabilityID, Package: v.PkgName, InstalledVersion: v.InstalledVersion,
					FixedVersion: v.FixedVersion, Severity: v.Severity, //nolint:staticcheck // SA1019: what Trivy's reports print
				})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return findings
}

// cliFields keeps of findings what trivyImageScan compares: id, package, versions, severity.
func cliFields(findings []scanner.Finding) []scanner.Finding {
	var out []scanner.Finding
	for _, f := range findings {
		out = append(out, scanner.Finding{
			ID: f.ID, Package: f.Package, InstalledVersion: f.InstalledVersion, FixedVersion: f.FixedVersion, Severity: f.Severity,
		})
	}
	return out
}

// TestFindingsEqualTrivyImage compares the scanner's findings with those of Trivy's own image
// scan of the same image and DB, on the fields users compare: id, package, versions, severity.
func TestFindingsEqualTrivyImage(t *testing.T) {
	f := newFixture(t)
	images := map[string]func(testing.TB) v1.Image{
		"alpine": alpineImage, "debian": debianImage, "npm": npmImage,
		"go": func(t testing.TB) v1.Image { return testutil.GoBinaryImage(t, testutil.DefaultGoModules) },
	}
	for name, build := range images {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			ctx := testContext(t)
			tagged, digest := f.reg.Push(t, "parity/"+name, "1.0", build(t))
			want := trivyImageScan(ctx, t, f, tagged)
			g.Expect(want).NotTo(BeEmpty(), "the fixture must have findings for the comparison to mean anything")

			_, res, err := f.scanner.Scan(ctx, scanner.ImageRef{Repository: f.reg.Host() + "/parity/" + name, Digest: digest.String()})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(cliFields(res.Findings)).To(ConsistOf(want))
		})
	}
}

// trivyScanTarget matches inv the way Trivy's own detection does, without this package's
// prefilter or batched detector: Trivy's default OS and language scanners, ScanTarget and the
// result filter, on copies of the inventory. Every field of a finding is kept.
func trivyScanTarget(ctx context.Context, t *testing.T, f *fixture, inv *scanner.Inventory) []scanner.Finding {
	t.Helper()
	svc := local.NewService(nil, ospkg.NewScanner(), langpkg.NewScanner(), vulnerability.NewClient(trivydb.Config{}))
	apps := make([]ftypes.Application, len(inv.Applications))
	for i, app := range inv.Applications {
		app.Packages = slices.Clone(app.Packages)
		apps[i] = app
	}
	target := types.ScanTarget{
		Name:         inv.Repository + "@" + inv.Digest,
		OS:           inv.OS,
		Repository:   inv.PkgRepository,
		Packages:     slices.Clone(inv.Packages),
		Applications: apps,
	}
	var findings []scanner.Finding
	err := f.db.View(func(scanner.DBInfo) error {
		results, _, err := svc.ScanTarget(ctx, target, cliScanOptions)
		if err != nil {
			return err
		}
		if err := result.Filter(ctx, types.Report{Results: results}, cliFilterOptions); err != nil {
			return err
		}
		for _, r := range results {
			for _, v := range r.Vulnerabilities {
				findings = append(findings, scanner.Finding{
					ID: v.VulnerabilityID, Package: v.PkgName, InstalledVersion: v.InstalledVersion,
					FixedVersion: v.FixedVersion, Severity: v.Severity, Status: v.Status.String(), //nolint:staticcheck // SA1019: what Trivy's reports print
					Title: v.Title, PrimaryURL: v.PrimaryURL, Target: r.Target, PackageType: string(r.Type),
				})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	scanner.SortFindings(findings)
	return findings
}

// edgeAdvisories exercise every branch of Alpine detection (fixed, fixed already or in the
// installed version, unfixed, status,
// unparseable fixed and affected versions, first affected version before and after the installed
// one, origin lookups, other releases) and the language prefilter (a supplier bucket).
const edgeAdvisories = `
updatedAt: 2026-11-01T00:00:00Z
dataSources:
  "seal npm::Seal Security npm": {id: seal, name: Seal Security}
advisories:
- {id: CVE-2026-3001, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r19, severity: HIGH, title: fixed later}
- {id: CVE-2026-3002, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.36.0-r0, severity: HIGH}
- {id: CVE-2026-3003, ecosystem: alpine 3.22, package: busybox, severity: LOW}
- {id: CVE-2026-3004, ecosystem: alpine 3.22, package: busybox, fixedVersion: not-a-version, severity: LOW}
- {id: CVE-2026-3005, ecosystem: alpine 3.22, package: busybox, affectedVersion: 1.38.0-r0, fixedVersion: 1.39.0-r0, severity: MEDIUM}
- {id: CVE-2026-3006, ecosystem: alpine 3.22, package: busybox, affectedVersion: 1.30.0-r0, fixedVersion: 1.38.0-r0, severity: MEDIUM}
- {id: CVE-2026-3007, ecosystem: alpine 3.22, package: busybox, affectedVersion: bad!, severity: MEDIUM}
- {id: CVE-2026-3008, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r19}
- {id: CVE-2026-3009, ecosystem: alpine 3.22, package: busybox, status: will_not_fix, severity: LOW}
- {id: CVE-2026-3013, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r18, severity: HIGH}
- {id: CVE-2026-3014, ecosystem: alpine 3.22, package: busybox, affectedVersion: 1.37.0-r18, fixedVersion: 1.38.0-r0, severity: LOW}
- {id: CVE-2026-3010, ecosystem: alpine 3.22, package: openssl, fixedVersion: 3.5.2-r0, severity: CRITICAL, title: openssl overflow}
- {id: CVE-2026-3011, ecosystem: alpine 3.22, package: weird, fixedVersion: 2.0-r0, severity: HIGH}
- {id: CVE-2026-3012, ecosystem: alpine 3.22, package: libcrypto3, fixedVersion: 9.0-r0, severity: HIGH}
- {id: CVE-2026-3020, ecosystem: alpine 3.21, package: busybox, fixedVersion: 1.37.0-r20, severity: HIGH}
- {id: CVE-2026-3021, ecosystem: alpine edge, package: busybox, fixedVersion: 1.37.0-r21, severity: HIGH}
- {id: GHSA-35jh-r3h4-6jhm, ecosystem: "npm::GitHub Security Advisory npm", package: lodash, vulnerableVersions: ["<4.17.21"], patchedVersions: ["4.17.21"], severity: HIGH}
- {id: GHSA-seal-0000-0001, ecosystem: "seal npm::Seal Security npm", package: "@seal-security/ejs", vulnerableVersions: ["<3.1.11"], patchedVersions: ["3.1.11"], severity: HIGH}
`

// debianEdgeAdvisories exercise Debian detection: epochs, a fix in the installed version, an
// unparseable fixed version, unfixed advisories with and without a status, binNMU source versions,
// another release's bucket, and a package with no source of its own.
const debianEdgeAdvisories = `
updatedAt: 2026-11-01T00:00:00Z
advisories:
- {id: CVE-2026-4001, ecosystem: debian 12, package: zlib, fixedVersion: "1:1.2.13.dfsg-2", severity: HIGH, title: epoch fix later}
- {id: CVE-2026-4002, ecosystem: debian 12, package: zlib, fixedVersion: "1:1.2.13.dfsg-1", severity: HIGH}
- {id: CVE-2026-4003, ecosystem: debian 12, package: zlib, severity: LOW}
- {id: CVE-2026-4004, ecosystem: debian 12, package: zlib, status: will_not_fix, severity: MEDIUM}
- {id: CVE-2026-4005, ecosystem: debian 12, package: zlib, fixedVersion: "not a version!", severity: LOW}
- {id: CVE-2026-4006, ecosystem: debian 12, package: zlib, fixedVersion: "1.2.14-1", severity: HIGH, title: no epoch is below an epoch}
- {id: CVE-2026-4010, ecosystem: debian 12, package: openssl, fixedVersion: "3.0.16-1~deb12u1", severity: CRITICAL}
- {id: CVE-2026-4011, ecosystem: debian 12, package: openssl, fixedVersion: "3.0.15-1~deb12u1"}
- {id: CVE-2026-4020, ecosystem: debian 12, package: foo, fixedVersion: "1.0-2", severity: MEDIUM}
- {id: CVE-2026-4021, ecosystem: debian 12, package: foo, fixedVersion: "1.0-1+b1", severity: MEDIUM, title: the binary version is not the source one}
- {id: CVE-2026-4030, ecosystem: debian 11, package: bar, fixedVersion: "3.0-1", severity: HIGH}
`

// edgeInventory is an Alpine inventory for edgeAdvisories, with repo as its package repository.
func edgeInventory(osName string, repo *ftypes.Repository) *scanner.Inventory {
	apk := func(name, version, origin string) ftypes.Package {
		return ftypes.Package{ID: name + "@" + version, Name: name, Version: version, SrcName: origin,
			SrcVersion: version, Arch: "x86_64"}
	}
	npm := func(name, version string) ftypes.Package {
		return ftypes.Package{ID: name + "@" + version, Name: name, Version: version,
			FilePath: "usr/lib/node_modules/" + name + "/package.json"}
	}
	return &scanner.Inventory{
		Repository:    "example.invalid/edge",
		Digest:        "sha256:" + strings.Repeat("e", 64),
		OS:            ftypes.OS{Family: ftypes.Alpine, Name: osName},
		PkgRepository: repo,
		Packages: ftypes.Packages{
			apk("busybox", "1.37.0-r18", "busybox"),
			apk("libcrypto3", "3.5.1-r0", "openssl"),
			apk("libssl3", "3.5.1-r0", "openssl"),
			apk("weird", "1.0-rX", "weird"),
			apk("zlib", "1.3.1-r2", "zlib"),
		},
		Applications: []ftypes.Application{{Type: ftypes.NodePkg, Packages: ftypes.Packages{
			npm("lodash", "4.17.20"), npm("@seal-security/ejs", "3.1.10"), npm("minimist", "1.2.8"),
		}}},
	}
}

// TestMatchEqualsTrivyScanTarget compares the scanner's findings, every field, with those of
// Trivy's own ScanTarget on the same inventory: on the fixture images (Alpine, Debian, npm, Go),
// on the benchmark's image and dense DB, and on Alpine edge cases. It guards the prefilter and the
// batched Alpine detector, which must change nothing but the cost.
func TestMatchEqualsTrivyScanTarget(t *testing.T) {
	check := func(t *testing.T, f *fixture, inv *scanner.Inventory) []scanner.Finding {
		t.Helper()
		g := NewWithT(t)
		ctx := testContext(t)
		want := trivyScanTarget(ctx, t, f, inv)
		res, err := f.scanner.Match(ctx, inv)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res.Findings).To(Equal(want))
		return want
	}
	analyzed := func(t *testing.T, f *fixture, name string, img v1.Image) *scanner.Inventory {
		t.Helper()
		inv, _, err := f.scanner.Inventory(testContext(t), f.push(t, "match-parity/"+name, img))
		if err != nil {
			t.Fatal(err)
		}
		return inv
	}

	t.Run("fixture images", func(t *testing.T) {
		f := newFixture(t)
		images := map[string]v1.Image{
			"alpine": alpineImage(t), "debian": debianImage(t), "npm": npmImage(t),
			"go": testutil.GoBinaryImage(t, testutil.DefaultGoModules),
		}
		for name, img := range images {
			t.Run(name, func(t *testing.T) {
				want := check(t, f, analyzed(t, f, name, img))
				NewWithT(t).Expect(want).NotTo(BeEmpty(), "the fixture must have findings")
			})
		}
	})

	t.Run("dense DB", func(t *testing.T) {
		f := newFixtureWithDB(t, benchDB())
		want := check(t, f, analyzed(t, f, "dense", benchImage(t, 250)))
		NewWithT(t).Expect(want).To(HaveLen(42))
	})

	t.Run("debian edge cases", func(t *testing.T) {
		f := newFixtureWithDB(t, must(testutil.ParseAdvisories([]byte(debianEdgeAdvisories))))
		img := must(testutil.DebianImage("12.11", []testutil.DebPackage{
			{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"},
			{Name: "libssl3", Version: "3.0.15-1~deb12u1", Source: "openssl"},
			{Name: "openssl", Version: "3.0.15-1~deb12u1"},
			{Name: "libfoo1", Version: "1.0-1+b1", Source: "foo", SourceVersion: "1.0-1"},
			{Name: "bar", Version: "2.0-1"},
		}))
		inv := analyzed(t, f, "debian-edge", img)
		for range 2 { // the second match reads the memo
			got := check(t, f, inv)
			var ids []string
			for _, finding := range got {
				ids = append(ids, finding.ID+" "+finding.Package)
			}
			NewWithT(t).Expect(ids).To(ConsistOf(
				"CVE-2026-4001 zlib1g", "CVE-2026-4003 zlib1g", "CVE-2026-4004 zlib1g",
				"CVE-2026-4010 libssl3", "CVE-2026-4010 openssl", "CVE-2026-4020 libfoo1", "CVE-2026-4021 libfoo1",
			))
		}
	})

	t.Run("alpine edge cases", func(t *testing.T) {
		f := newFixtureWithDB(t, must(testutil.ParseAdvisories([]byte(edgeAdvisories))))
		ids := func(findings []scanner.Finding) []string {
			var out []string
			for _, finding := range findings {
				out = append(out, finding.ID+" "+finding.Package)
			}
			return out
		}
		cases := map[string]struct {
			inv  *scanner.Inventory
			want []string // the findings' "id package", to show each case means something
		}{
			"os release": {edgeInventory("3.22.1", nil), []string{
				"CVE-2026-3010 libcrypto3", "CVE-2026-3010 libssl3", "CVE-2026-3001 busybox",
				"GHSA-35jh-r3h4-6jhm lodash", "GHSA-seal-0000-0001 @seal-security/ejs",
				"CVE-2026-3006 busybox", "CVE-2026-3003 busybox", "CVE-2026-3014 busybox",
				"CVE-2026-3009 busybox", "CVE-2026-3008 busybox",
			}},
			"repository release": {
				edgeInventory("3.22.1", &ftypes.Repository{Family: ftypes.Alpine, Release: "3.21.3"}),
				[]string{"CVE-2026-3020 busybox", "GHSA-35jh-r3h4-6jhm lodash", "GHSA-seal-0000-0001 @seal-security/ejs"},
			},
			"edge repository": {
				edgeInventory("3.22.1", &ftypes.Repository{Family: ftypes.Alpine, Release: "edge"}),
				[]string{"CVE-2026-3021 busybox", "GHSA-35jh-r3h4-6jhm lodash", "GHSA-seal-0000-0001 @seal-security/ejs"},
			},
			"release without advisories": {
				edgeInventory("3.19.4", nil),
				[]string{"GHSA-35jh-r3h4-6jhm lodash", "GHSA-seal-0000-0001 @seal-security/ejs"},
			},
		}
		for name, tc := range cases {
			t.Run(name, func(t *testing.T) {
				got := check(t, f, tc.inv)
				NewWithT(t).Expect(ids(got)).To(ConsistOf(tc.want))
			})
		}
	})
}

// The memo of language packages' detections is keyed by every field as it is: packages whose
// fields join to the same string (an image's IDs and versions are its own, NULs included) are
// different questions, and the second is answered as Trivy answers it, not from the first.
func TestMatchMemoKeysDoNotCollide(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	inventory := func(pkg ftypes.Package) *scanner.Inventory {
		return &scanner.Inventory{Repository: "example.com/collide", Digest: "sha256:" + strings.Repeat("0", 64),
			Applications: []ftypes.Application{{Type: ftypes.NodePkg, Packages: ftypes.Packages{pkg}}}}
	}
	first := inventory(ftypes.Package{ID: "X", Name: "minimist", Version: "lodash\x004.17.20"})
	second := inventory(ftypes.Package{ID: "X\x00minimist", Name: "lodash", Version: "4.17.20"})
	for _, inv := range []*scanner.Inventory{first, second, first} {
		res, err := f.scanner.Match(ctx, inv)
		if err != nil {
			t.Fatal(err)
		}
		if want := trivyScanTarget(ctx, t, f, inv); !slices.Equal(res.Findings, want) {
			t.Fatalf("%q: findings %v, Trivy's %v", inv.Applications[0].Packages[0].Name, res.Findings, want)
		}
	}
	res, _ := f.scanner.Match(ctx, second)
	if len(res.Findings) == 0 {
		t.Fatal("lodash 4.17.20 has a finding in the fixture DB: the comparison means nothing without it")
	}
}
