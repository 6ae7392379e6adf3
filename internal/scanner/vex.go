package scanner

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/types"
	"github.com/aquasecurity/trivy/pkg/vex"
)

// Suppressed is a finding a VEX statement removed: what it was, and the statement's status,
// justification and source.
type Suppressed struct {
	ID               string `json:"id"`
	Package          string `json:"package"`
	InstalledVersion string `json:"installedVersion,omitempty"`
	Severity         string `json:"severity,omitempty"`
	Target           string `json:"target,omitempty"`
	// Status is the statement's: not_affected or fixed.
	Status string `json:"status"`
	// Justification is the statement's (an OpenVEX justification, a CSAF flag), when it gives one.
	Justification string `json:"justification,omitempty"`
	// Source is the VEX document the statement came from.
	Source string `json:"source"`
}

// MatchVEX matches inv against the current DB as Match does, then removes the findings the VEX
// documents in vexFiles (OpenVEX or CSAF, JSON) state not to affect the image: Trivy's own VEX
// filter (pkg/vex, what `trivy image --vex FILE` runs), on the SBOM of every package of the image,
// so that a statement applies exactly when it applies in Trivy: its vulnerability, and its product
// (the image, pkg:oci/NAME@DIGEST, or a package) and subcomponents (PURLs). The removed findings
// are in Result.Suppressed, with the statement's status, justification and source. It makes no
// registry request.
func (s *Scanner) MatchVEX(ctx context.Context, inv *Inventory, vexFiles []string) (*Result, error) {
	var res *Result
	err := s.db.View(func(info DBInfo) error {
		var err error
		res, err = s.matcher.match(ctx, inv, info, vexFiles)
		if res != nil {
			res.DB = info
		}
		return err
	})
	return res, err
}

// inventoryCopies returns copies of inv's packages and applications, which Trivy's ScanTarget
// may filter in place.
func inventoryCopies(inv *Inventory) (ftypes.Packages, []ftypes.Application) {
	apps := make([]ftypes.Application, len(inv.Applications))
	for i, app := range inv.Applications {
		app.Packages = slices.Clone(app.Packages)
		apps[i] = app
	}
	return slices.Clone(inv.Packages), apps
}

// applyVEX keeps, of each result's vulnerabilities, those kept by the filter (kept), then runs
// Trivy's VEX filter over the report Trivy would have made of them, and returns what it removed.
func applyVEX(ctx context.Context, inv *Inventory, detectedOS ftypes.OS, results types.Results, kept [][]int, vexFiles []string) ([]Suppressed, error) {
	for i := range results {
		vulns := make([]types.DetectedVulnerability, len(kept[i]))
		for j, k := range kept[i] {
			vulns[j] = results[i].Vulnerabilities[k]
		}
		results[i].Vulnerabilities = vulns
	}
	name := inv.Repository + "@" + inv.Digest
	report := types.Report{
		SchemaVersion: reportSchemaVersion,
		ArtifactName:  name,
		ArtifactType:  ftypes.TypeContainerImage,
		Metadata:      types.Metadata{RepoDigests: []string{name}},
		Results:       results,
	}
	if detectedOS.Detected() {
		report.Metadata.OS = &detectedOS
	}
	sources := make([]vex.Source, len(vexFiles))
	for i, f := range vexFiles {
		sources[i] = vex.Source{Type: vex.TypeFile, FilePath: f}
	}
	if err := vex.Filter(ctx, &report, vex.Options{Sources: sources}); err != nil {
		return nil, fmt.Errorf("applying VEX: %w", err)
	}
	var suppressed []Suppressed
	for _, r := range report.Results {
		for _, m := range r.ModifiedFindings {
			v, ok := m.Finding.(types.DetectedVulnerability)
			if !ok {
				continue
			}
			suppressed = append(suppressed, Suppressed{
				ID: v.VulnerabilityID, Package: v.PkgName, InstalledVersion: v.InstalledVersion,
				Severity: v.Severity, //nolint:staticcheck // SA1019: the severity Findings carry
				Target:   r.Target, Status: string(m.Status), Justification: m.Statement, Source: m.Source,
			})
		}
	}
	slices.SortFunc(suppressed, func(a, b Suppressed) int {
		return cmp.Or(strings.Compare(a.ID, b.ID), strings.Compare(a.Package, b.Package),
			strings.Compare(a.InstalledVersion, b.InstalledVersion), strings.Compare(a.Target, b.Target),
			strings.Compare(a.Source, b.Source), strings.Compare(a.Status, b.Status))
	})
	return suppressed, nil
}
