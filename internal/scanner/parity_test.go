package scanner_test

import (
	"context"
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
	"github.com/aquasecurity/trivy/pkg/vulnerability"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
)

// trivyImageScan scans ref the way `trivy image --scanners vuln` does: Trivy's own remote image,
// its CLI's analyzer choice for images, Service.Scan and the result filter.
func trivyImageScan(ctx context.Context, t *testing.T, f *fixture, ref string) []scanner.Finding {
	t.Helper()
	img, cleanup, err := image.NewContainerImage(ctx, ref, ftypes.ImageOptions{
		RegistryOptions: ftypes.RegistryOptions{Insecure: true},
		ImageSources:    ftypes.ImageSources{ftypes.RemoteImageSource},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	disabled := append([]analyzer.Type{}, analyzer.TypeLockfiles...)
	disabled = append(disabled, analyzer.TypeConfigFiles...)
	disabled = append(disabled, analyzer.TypeApkCommand, analyzer.TypeSecret, analyzer.TypeLicenseFile,
		analyzer.TypeHistoryDockerfile, analyzer.TypeExecutable, analyzer.TypeRpmArchive)
	blobs := cache.NewMemoryCache()
	art, err := imageartifact.NewArtifact(img, blobs, artifact.Option{DisabledAnalyzers: disabled, NoProgress: true})
	if err != nil {
		t.Fatal(err)
	}
	artRef, err := art.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	svc := local.NewService(applier.NewApplier(blobs), ospkg.NewScanner(), langpkg.NewScanner(), vulnerability.NewClient(trivydb.Config{}))
	var findings []scanner.Finding
	err = f.db.View(func(scanner.DBInfo) error {
		resp, err := svc.Scan(ctx, artRef.Name, artRef.ID, artRef.BlobIDs, types.ScanOptions{
			PkgTypes:            []string{types.PkgTypeOS, types.PkgTypeLibrary},
			PkgRelationships:    ftypes.Relationships,
			Scanners:            types.Scanners{types.VulnerabilityScanner},
			VulnSeveritySources: []dbTypes.SourceID{"auto"},
		})
		if err != nil {
			return err
		}
		report := types.Report{Results: resp.Results}
		if err := result.Filter(ctx, report, result.FilterOptions{Severities: []dbTypes.Severity{dbTypes.SeverityCritical, dbTypes.SeverityHigh, dbTypes.SeverityMedium, dbTypes.SeverityLow, dbTypes.SeverityUnknown}}); err != nil {
			return err
		}
		for _, r := range report.Results {
			for _, v := range r.Vulnerabilities {
				findings = append(findings, scanner.Finding{
					ID: v.VulnerabilityID, Package: v.PkgName, InstalledVersion: v.InstalledVersion,
					FixedVersion: v.FixedVersion, Severity: v.Severity,
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
			var got []scanner.Finding
			for _, finding := range res.Findings {
				got = append(got, scanner.Finding{
					ID: finding.ID, Package: finding.Package, InstalledVersion: finding.InstalledVersion,
					FixedVersion: finding.FixedVersion, Severity: finding.Severity,
				})
			}
			g.Expect(got).To(ConsistOf(want))
		})
	}
}
