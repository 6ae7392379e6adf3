package scanner

import (
	"context"
	"fmt"
	"io"
	"slices"

	trivydb "github.com/aquasecurity/trivy-db/pkg/db"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/report/cyclonedx"
	"github.com/aquasecurity/trivy/pkg/report/spdx"
	"github.com/aquasecurity/trivy/pkg/scan/langpkg"
	"github.com/aquasecurity/trivy/pkg/scan/local"
	"github.com/aquasecurity/trivy/pkg/scan/ospkg"
	"github.com/aquasecurity/trivy/pkg/types"
	"github.com/aquasecurity/trivy/pkg/vulnerability"
)

// reportSchemaVersion is Trivy's report.SchemaVersion (pkg/report, which would bring its table
// and SARIF writers into the build for one constant).
const reportSchemaVersion = 2

// SBOMFormats are the formats WriteSBOM writes, named as Trivy's --format names them:
// CycloneDX JSON, SPDX JSON and SPDX tag-value.
var SBOMFormats = []string{"cyclonedx", "spdx-json", "spdx"}

// WriteSBOM writes the SBOM of a kept inventory in format (one of SBOMFormats) with Trivy's own
// SBOM writers: the report they are given is the one Trivy's scan builds for `trivy image
// --format <format>` (its results made by Trivy's ScanTarget from the same packages, every
// package listed, no vulnerabilities), so the components, their PURLs and their relationships are
// Trivy's. No registry and no vulnerability DB is read. The image component is named as Trivy
// names it (image: the repository and digest asked for; the architecture); its config digest and
// layers are not kept in an inventory, so they are not in the SBOM.
func WriteSBOM(ctx context.Context, w io.Writer, inv *Inventory, image ImageName, format string) error {
	if !slices.Contains(SBOMFormats, format) {
		return fmt.Errorf("unknown SBOM format %q: use one of %v", format, SBOMFormats)
	}
	pkgs, apps := inventoryCopies(inv)
	name := image.reference(inv)
	target := types.ScanTarget{
		Name:         name,
		OS:           inv.OS,
		Repository:   inv.PkgRepository,
		Packages:     pkgs,
		Applications: apps,
	}
	// The SBOM scanner alone: packages, no detection, so the DB handle is never read.
	svc := local.NewService(nil, ospkg.NewScanner(), langpkg.NewScanner(), vulnerability.NewClient(trivydb.Config{}))
	results, detectedOS, err := svc.ScanTarget(ctx, target, types.ScanOptions{
		PkgTypes:         []string{types.PkgTypeOS, types.PkgTypeLibrary},
		PkgRelationships: ftypes.Relationships,
		Scanners:         types.Scanners{types.SBOMScanner},
	})
	if err != nil {
		return fmt.Errorf("listing the packages of %s: %w", name, err)
	}
	r := imageReport(inv, image, detectedOS, results)
	var writer interface {
		Write(context.Context, types.Report) error
	}
	switch format {
	case "cyclonedx":
		writer = cyclonedx.NewWriter(w, TrivyVersion())
	default:
		writer = spdx.NewWriter(w, TrivyVersion(), types.Format(format))
	}
	if err := writer.Write(ctx, r); err != nil {
		return fmt.Errorf("writing the %s SBOM of %s: %w", format, name, err)
	}
	return nil
}
