package scanner

import (
	"context"
	"sort"

	"golang.org/x/xerrors"

	dbTypes "github.com/aquasecurity/trivy-db/pkg/types"
	"github.com/aquasecurity/trivy/pkg/detector/library"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/log"
	"github.com/aquasecurity/trivy/pkg/scan/langpkg"
	"github.com/aquasecurity/trivy/pkg/types"
)

// langScanner is Trivy's language package scanner (pkg/scan/langpkg.Scanner, Trivy v0.74) with
// each package's detection kept in the memo. Trivy's library detector decodes every advisory of a
// package from JSON and parses every version range again on every match (most of a Node image's
// re-match); what it finds for a package depends only on the DB, the package's type, ID, name and
// version, so the memo keeps Driver.DetectVulnerabilities' answer under those, per DB. The
// detection itself is Trivy's driver, called as Trivy's library.Detect calls it; the results are
// built, ordered and skipped as Trivy's scanner does. TestMatchEqualsTrivyScanTarget,
// TestEcosystemsEqualTrivy and TestRealScaleDBMatchEqualsTrivy compare it with Trivy's own.
type langScanner struct {
	memo *dbMemo
}

var _ langpkg.Scanner = langScanner{}

// libraryFinding is what Driver.DetectVulnerabilities sets on a finding from the DB; the rest is
// the package's (its ID, name and version, which the driver copies from its arguments, and what
// library.Detect adds), set on each match.
type libraryFinding struct {
	id, fixed  string
	vendorIDs  []string
	dataSource *dbTypes.DataSource
	custom     any
}

// Scan is langpkg's scanner.Scan.
func (s langScanner) Scan(ctx context.Context, target types.ScanTarget, opts types.ScanOptions) (types.Results, error) {
	var results types.Results
	for _, app := range target.Applications {
		if len(app.Packages) == 0 {
			continue
		}
		result := types.Result{
			Target: libraryTarget(app.Type, app.FilePath),
			Class:  types.ClassLangPkg,
			Type:   app.Type,
		}
		sort.Sort(app.Packages)
		result.Packages = app.Packages
		if opts.Scanners.Enabled(types.VulnerabilityScanner) {
			vulns, err := s.detect(ctx, app.Type, app.Packages)
			if err != nil {
				return nil, xerrors.Errorf("failed vulnerability detection of libraries: %w", err)
			}
			result.Vulnerabilities = vulns
		}
		if len(result.Packages) == 0 && len(result.Vulnerabilities) == 0 {
			continue
		}
		results = append(results, result)
	}
	sort.Slice(results, func(i, j int) bool {
		return results[i].Target < results[j].Target
	})
	return results, nil
}

// libraryTarget is langpkg's target name.
func libraryTarget(appType ftypes.LangType, filePath string) string {
	if t, ok := langpkg.PkgTargets[appType]; ok && filePath == "" {
		return t
	}
	return filePath
}

// detect is library.Detect, reading each package's findings from the memo.
func (s langScanner) detect(ctx context.Context, libType ftypes.LangType, pkgs []ftypes.Package) ([]types.DetectedVulnerability, error) {
	driver, ok := library.NewDriver(libType)
	if !ok {
		return nil, nil
	}
	// Each package's findings are read first and the findings, large structs, made at once.
	found := make([][]libraryFinding, len(pkgs))
	n := 0
	for i, pkg := range pkgs {
		if pkg.Version == "" {
			log.DebugContext(ctx, "Skipping vulnerability scan as no version is detected for the package",
				log.String("name", pkg.Name))
			continue
		}
		var err error
		if found[i], err = s.memo.library(&driver, libType, pkg); err != nil {
			return nil, xerrors.Errorf("failed to scan %s vulnerabilities: %w", driver.Type(),
				xerrors.Errorf("failed to detect %s vulnerabilities: %w", driver.Type(), err))
		}
		n += len(found[i])
	}
	if n == 0 {
		return nil, nil
	}
	vulns := make([]types.DetectedVulnerability, 0, n)
	for i := range pkgs {
		pkg := &pkgs[i]
		for _, f := range found[i] {
			vuln := types.DetectedVulnerability{
				VulnerabilityID: f.id,
				// Shared between matches, as the memo's advisories are: nothing after detection
				// writes to them (FillInfo, the filter and the finding conversion read them).
				VendorIDs:        f.vendorIDs,
				PkgID:            pkg.ID,
				PkgName:          pkg.Name,
				InstalledVersion: pkg.Version,
				FixedVersion:     f.fixed,
				Custom:           f.custom,
				Layer:            pkg.Layer,
				PkgPath:          pkg.FilePath,
				PkgIdentifier:    pkg.Identifier,
			}
			if f.dataSource != nil {
				// Trivy gives every finding its own copy; the memo's is shared.
				ds := *f.dataSource
				vuln.DataSource = &ds
			}
			vulns = append(vulns, vuln)
		}
	}
	return vulns, nil
}

// library returns what driver finds for pkg, from the memo when it was asked before under the
// DB in use; the caller holds the DB still.
func (m *dbMemo) library(driver *library.Driver, libType ftypes.LangType, pkg ftypes.Package) ([]libraryFinding, error) {
	key := libraryKey{string(libType), pkg.ID, pkg.Name, pkg.Version}
	m.mu.Lock()
	found, ok := m.libraries.get(key)
	m.mu.Unlock()
	if ok {
		return found, nil
	}
	vulns, err := driver.DetectVulnerabilities(pkg.ID, pkg.Name, pkg.Version)
	if err != nil {
		return nil, err
	}
	found = make([]libraryFinding, len(vulns))
	for i, v := range vulns {
		found[i] = libraryFinding{id: v.VulnerabilityID, fixed: v.FixedVersion, vendorIDs: v.VendorIDs, dataSource: v.DataSource, custom: v.Custom}
	}
	m.mu.Lock()
	m.libraries.add(key, found, max(len(found), 1)+keyWeight(key.typ, key.id, key.name, key.version))
	m.mu.Unlock()
	return found, nil
}
