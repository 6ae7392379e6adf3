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
	// Suppressed are the findings VEX statements removed from Findings (MatchVEX).
	Suppressed []Suppressed `json:"suppressed,omitempty"`
	DB         DBInfo       `json:"-"`
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
	// family keeps Trivy's. Language packages' detections are kept in the memo (langScanner).
	// Trivy's vulnerability client reads its records through the memo.
	memo := newDBMemo()
	osScanner := ospkg.NewScanner(
		ospkgDetector.WithDriver(ftypes.Alpine, newAlpineDriver()),
		ospkgDetector.WithDriver(ftypes.Debian, newDebianDriver(memo)),
	)
	return &matcher{memo: memo, service: local.NewService(nil, osScanner, langScanner{memo: memo},
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

// filterSeverities are the severities `trivy image` keeps by default: all of them.
var filterSeverities = Severities

// match detects the vulnerabilities of inv with the DB as it is; the caller holds the DB still.
func (m *matcher) match(ctx context.Context, inv *Inventory, db DBInfo, vexOpts VEXOptions) (*Result, error) {
	m.memo.use(db.Digest)
	// The candidates are copies: ScanTarget filters the slices it is given in place. VEX is
	// applied on the SBOM of every package, as Trivy's is (a statement may name a package
	// without advisories as the product), so then every package is a candidate.
	var pkgs ftypes.Packages
	var apps []ftypes.Application
	if len(vexOpts.Files) == 0 {
		var err error
		if pkgs, apps, err = m.index.candidates(db.Digest, inv); err != nil {
			return nil, fmt.Errorf("reading the vulnerability DB: %w", err)
		}
	} else {
		pkgs, apps = inventoryCopies(inv)
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
	res := &Result{Platform: inv.Platform, ImageDigest: inv.Digest, JavaArchives: inv.JavaArchives, OS: OS{Family: string(detectedOS.Family), Name: detectedOS.Name, EOSL: detectedOS.Eosl}}
	kept := make([][]int, len(results))
	n := 0
	for i := range results {
		kept[i] = filterVulnerabilities(results[i].Vulnerabilities)
		n += len(kept[i])
	}
	if len(vexOpts.Files) > 0 {
		// VEX filters the kept vulnerabilities themselves: every one it leaves is a finding.
		keepOnly(results, kept)
		suppressed, err := applyVEX(ctx, inv, detectedOS, results, vexOpts)
		if err != nil {
			return nil, err
		}
		res.Suppressed = suppressed
		kept, n = nil, 0
		for _, r := range results {
			n += len(r.Vulnerabilities)
		}
	}
	res.Findings = make([]Finding, 0, n)
	for i := range results {
		r := &results[i]
		if kept == nil {
			for j := range r.Vulnerabilities {
				res.Findings = append(res.Findings, findingOf(r, &r.Vulnerabilities[j]))
			}
			continue
		}
		for _, j := range kept[i] {
			res.Findings = append(res.Findings, findingOf(r, &r.Vulnerabilities[j]))
		}
	}
	SortFindings(res.Findings)
	return res, nil
}

// findingOf is the finding of v, a vulnerability of r.
func findingOf(r *types.Result, v *types.DetectedVulnerability) Finding {
	return Finding{
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
	}
}

// keepOnly leaves of each result's vulnerabilities those at the indexes kept gives.
func keepOnly(results types.Results, kept [][]int) {
	for i := range results {
		vulns := make([]types.DetectedVulnerability, len(kept[i]))
		for j, k := range kept[i] {
			vulns[j] = results[i].Vulnerabilities[k]
		}
		results[i].Vulnerabilities = vulns
	}
}

// filterVulnerabilities is what Trivy's result.Filter (Trivy v0.74) does to one result's
// vulnerabilities under `trivy image`'s defaults (every severity, no ignored statuses, no ignore
// file, no VEX source): an empty severity is UNKNOWN, other severities are dropped, and of the
// findings with the same vulnerability, package ID, name, installed version and path the one with
// the greatest fixed version is kept (the first of equals). It returns the indexes of those kept,
// in no particular order, and sets the empty severities. Trivy's copies every finding into a map by
// a formatted key and sorts them by severity, an order SortFindings replaces: it was two fifths of
// a Debian image's re-match. The parity tests compare the two.
func filterVulnerabilities(vulns []types.DetectedVulnerability) []int {
	kept := make([]int, 0, len(vulns))
	byKey := make(map[string]int, len(vulns)) // key: index in kept
	for i := range vulns {
		vuln := &vulns[i]
		// The severity Trivy's result.Filter reads and sets (the deprecated field, which its
		// reports print).
		if vuln.Severity == "" { //nolint:staticcheck // SA1019: see above
			vuln.Severity = dbTypes.SeverityUnknown.String() //nolint:staticcheck // SA1019: see above
		}
		if !slices.Contains(filterSeverities, vuln.Severity) { //nolint:staticcheck // SA1019: see above
			continue
		}
		// result.Filter's key, fmt.Sprintf("%s/%s/%s/%s/%s", ...), built without fmt.
		key := vuln.VulnerabilityID + "/" + vuln.PkgID + "/" + vuln.PkgName + "/" + vuln.InstalledVersion + "/" + vuln.PkgPath
		if k, ok := byKey[key]; ok {
			if vulns[kept[k]].FixedVersion < vuln.FixedVersion {
				kept[k] = i
			}
			continue
		}
		byKey[key] = len(kept)
		kept = append(kept, i)
	}
	return kept
}

// severityRank orders severities, most severe first; unknown strings last.
func severityRank(s string) int {
	if i := slices.Index(Severities, s); i >= 0 {
		return i
	}
	return len(Severities)
}

// SortFindings orders findings by severity, then id, package, installed version and target (and,
// on a tie, the other fields), so that equal inputs always give equal lists.
func SortFindings(findings []Finding) {
	// A permutation is sorted and the findings moved once: swapping the findings themselves (ten
	// strings each) was a visible part of a re-match. The keys are compared one after the other,
	// the next only on a tie.
	order := make([]int32, len(findings))
	ranks := make([]int8, len(findings))
	for i := range findings {
		order[i] = int32(i)
		ranks[i] = int8(severityRank(findings[i].Severity))
	}
	slices.SortFunc(order, func(i, j int32) int {
		if c := cmp.Compare(ranks[i], ranks[j]); c != 0 {
			return c
		}
		a, b := &findings[i], &findings[j]
		if c := strings.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		if c := strings.Compare(a.Package, b.Package); c != 0 {
			return c
		}
		if c := strings.Compare(a.InstalledVersion, b.InstalledVersion); c != 0 {
			return c
		}
		if c := strings.Compare(a.Target, b.Target); c != 0 {
			return c
		}
		// Ties on what is listed are broken by the rest, so that the order depends on the
		// findings only, not on the order they came in.
		return cmp.Or(strings.Compare(a.Severity, b.Severity), strings.Compare(a.FixedVersion, b.FixedVersion), strings.Compare(a.Status, b.Status),
			strings.Compare(a.Title, b.Title), strings.Compare(a.PrimaryURL, b.PrimaryURL),
			strings.Compare(a.PackageType, b.PackageType))
	})
	// The permutation is applied in place, one cycle at a time: order[k] is the finding that
	// belongs at k.
	for start := range findings {
		if order[start] < 0 {
			continue
		}
		held := findings[start]
		k := start
		for {
			next := int(order[k])
			order[k] = -1
			if next == start {
				findings[k] = held
				break
			}
			findings[k] = findings[next]
			k = next
		}
	}
}
