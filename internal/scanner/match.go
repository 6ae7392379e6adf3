package scanner

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	dbTypes "github.com/aquasecurity/trivy-db/pkg/types"
	ospkgDetector "github.com/aquasecurity/trivy/pkg/detector/ospkg"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/result"
	"github.com/aquasecurity/trivy/pkg/scan/langpkg"
	"github.com/aquasecurity/trivy/pkg/scan/local"
	"github.com/aquasecurity/trivy/pkg/scan/ospkg"
	"github.com/aquasecurity/trivy/pkg/types"
	"github.com/aquasecurity/trivy/pkg/vulnerability"
)

// DBInfo identifies the vulnerability DB findings were matched against.
type DBInfo struct {
	// UpdatedAt is when the DB was built.
	UpdatedAt time.Time
	// Digest is the DB artifact's digest, or the local DB file's.
	Digest string
}

// DB is the vulnerability DB Trivy's detection reads (a process-global in Trivy). View runs fn
// while the DB cannot be swapped, and fails when no DB is loaded.
type DB interface {
	View(fn func(DBInfo) error) error
}

// Severities in the order findings are listed, most severe first.
var Severities = []string{"CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"}

// Finding is one vulnerability in one installed package.
type Finding struct {
	ID               string `json:"id"`
	Package          string `json:"package"`
	InstalledVersion string `json:"installedVersion,omitempty"`
	FixedVersion     string `json:"fixedVersion,omitempty"`
	Severity         string `json:"severity"`
	Status           string `json:"status,omitempty"`
	Title            string `json:"title,omitempty"`
	PrimaryURL       string `json:"primaryURL,omitempty"`
	Target           string `json:"target,omitempty"`
	PackageType      string `json:"packageType,omitempty"`
}

// OS is the operating system found in an image.
type OS struct {
	Family string `json:"family,omitempty"`
	Name   string `json:"name,omitempty"`
	EOSL   bool   `json:"eosl,omitempty"`
}

// Result is an inventory matched against a DB.
type Result struct {
	// Platform is the image's (Inventory.Platform).
	Platform string `json:"platform,omitempty"`
	// ImageDigest is the image manifest's digest (Inventory.Digest).
	ImageDigest string `json:"imageDigest,omitempty"`
	// IndexPlatforms are the platforms of the index the image was asked for through, when it
	// was (Scanner.IndexPlatforms); Match leaves them to the caller.
	IndexPlatforms []string `json:"indexPlatforms,omitempty"`
	// JavaArchives counts the Java archives not analysed for want of a Java DB
	// (Inventory.JavaArchives): the findings lack their packages.
	JavaArchives int       `json:"javaArchives,omitempty"`
	OS           OS        `json:"os"`
	Findings     []Finding `json:"findings"`
	DB           DBInfo    `json:"-"`
}

// matcher runs Trivy's own detection over kept inventories.
type matcher struct {
	service local.Service
	index   advisoryIndex
	memo    *dbMemo
}

func newMatcher() *matcher {
	// The applier is not used: ScanTarget detects from an inventory we hand it. Alpine's detector
	// is replaced by a batched copy of it and Debian's by one that reads the memo; every other
	// family keeps Trivy's. Trivy's vulnerability client reads its records through the memo.
	memo := newDBMemo()
	osScanner := ospkg.NewScanner(
		ospkgDetector.WithDriver(ftypes.Alpine, newAlpineDriver()),
		ospkgDetector.WithDriver(ftypes.Debian, newDebianDriver(memo)),
	)
	return &matcher{memo: memo, service: local.NewService(nil, osScanner, langpkg.NewScanner(),
		vulnerability.NewClient(memoOperation{memo: memo}))}
}

// scanOptions are those of `trivy image --scanners vuln`; Trivy's zero values would silently
// drop every package or make every severity UNKNOWN.
var scanOptions = types.ScanOptions{
	PkgTypes:            []string{types.PkgTypeOS, types.PkgTypeLibrary},
	PkgRelationships:    ftypes.Relationships,
	Scanners:            types.Scanners{types.VulnerabilityScanner},
	VulnSeveritySources: []dbTypes.SourceID{"auto"},
}

var filterOptions = result.FilterOptions{
	Severities: []dbTypes.Severity{
		dbTypes.SeverityCritical, dbTypes.SeverityHigh, dbTypes.SeverityMedium,
		dbTypes.SeverityLow, dbTypes.SeverityUnknown,
	},
}

// match detects the vulnerabilities of inv with the DB as it is; the caller holds the DB still.
func (m *matcher) match(ctx context.Context, inv *Inventory, db DBInfo) (*Result, error) {
	m.memo.use(db.Digest)
	// The candidates are copies: ScanTarget filters the slices it is given in place.
	pkgs, apps, err := m.index.candidates(db.Digest, inv)
	if err != nil {
		return nil, fmt.Errorf("reading the vulnerability DB: %w", err)
	}
	target := types.ScanTarget{
		Name:         inv.Repository + "@" + inv.Digest,
		OS:           inv.OS,
		Repository:   inv.PkgRepository,
		Packages:     pkgs,
		Applications: apps,
	}
	results, detectedOS, err := m.service.ScanTarget(ctx, target, scanOptions)
	if err != nil {
		return nil, fmt.Errorf("matching against the vulnerability DB: %w", err)
	}
	if err := result.Filter(ctx, types.Report{Results: results}, filterOptions); err != nil {
		return nil, fmt.Errorf("filtering findings: %w", err)
	}
	res := &Result{Platform: inv.Platform, ImageDigest: inv.Digest, JavaArchives: inv.JavaArchives, OS: OS{Family: string(detectedOS.Family), Name: detectedOS.Name, EOSL: detectedOS.Eosl}}
	for _, r := range results {
		for _, v := range r.Vulnerabilities {
			res.Findings = append(res.Findings, Finding{
				ID:               v.VulnerabilityID,
				Package:          v.PkgName,
				InstalledVersion: v.InstalledVersion,
				FixedVersion:     v.FixedVersion,
				// The severity Trivy's own reports print, chosen by VulnSeveritySources; parity with them
				// depends on it.
				Severity:    v.Severity, //nolint:staticcheck // SA1019: see above
				Status:      v.Status.String(),
				Title:       v.Title,
				PrimaryURL:  v.PrimaryURL,
				Target:      r.Target,
				PackageType: string(r.Type),
			})
		}
	}
	SortFindings(res.Findings)
	return res, nil
}

// severityRank orders severities, most severe first; unknown strings last.
func severityRank(s string) int {
	if i := slices.Index(Severities, s); i >= 0 {
		return i
	}
	return len(Severities)
}

// SortFindings orders findings by severity, then id, package, installed version and target, so
// that equal inputs always give equal lists.
func SortFindings(findings []Finding) {
	// The keys are compared one after the other, the next only on a tie (cmp.Or would compute all
	// of them first: a visible part of a re-match).
	slices.SortFunc(findings, func(a, b Finding) int {
		if a.Severity != b.Severity {
			if c := cmp.Compare(severityRank(a.Severity), severityRank(b.Severity)); c != 0 {
				return c
			}
		}
		if c := strings.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		if c := strings.Compare(a.Package, b.Package); c != 0 {
			return c
		}
		if c := strings.Compare(a.InstalledVersion, b.InstalledVersion); c != 0 {
			return c
		}
		return strings.Compare(a.Target, b.Target)
	})
}
