package scanner

import (
	"container/list"
	"context"
	"maps"
	"sync"

	version "github.com/knqyf263/go-deb-version"
	"golang.org/x/xerrors"

	trivydb "github.com/aquasecurity/trivy-db/pkg/db"
	dbTypes "github.com/aquasecurity/trivy-db/pkg/types"
	"github.com/aquasecurity/trivy-db/pkg/vulnsrc/bucket"
	trivyvuln "github.com/aquasecurity/trivy-db/pkg/vulnsrc/vulnerability"
	"github.com/aquasecurity/trivy/pkg/detector/ospkg/debian"
	"github.com/aquasecurity/trivy/pkg/detector/ospkg/driver"
	osver "github.com/aquasecurity/trivy/pkg/detector/ospkg/version"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/log"
	"github.com/aquasecurity/trivy/pkg/scan/utils"
	"github.com/aquasecurity/trivy/pkg/types"
)

// Bounds of the memo: the advisories it keeps decoded (about 300 bytes each with their parsed
// version; a package with none counts as one) and the vulnerability records, by their estimated
// size (vulnerabilitySize): some 70 MiB at most.
const (
	memoMaxAdvisories        = 150_000
	memoMaxVulnerabilitySize = 24 << 20
)

// dbMemo keeps, for the DB in use (by digest), what re-matches read again and again: each package's
// advisories as trivy-db decodes them (with their fixed versions parsed once), and the
// vulnerability records Trivy's FillInfo reads for every finding. Trivy decodes both from JSON on
// every read; over a cluster's re-match after a DB swap the same few thousand packages and
// vulnerabilities are read for every image. It is emptied when the DB changes, and bounded
// (least recently used first out).
type dbMemo struct {
	mu     sync.Mutex
	digest string

	advLRU   *list.List // of *memoAdvisories
	advByKey map[string]*list.Element
	advCount int

	vulnLRU   *list.List // of *memoVulnerability
	vulnByID  map[string]*list.Element
	vulnSize  int
	maxAdv    int
	maxVulnSz int
}

type memoAdvisories struct {
	key   string
	items []memoAdvisory
}

// memoAdvisory is a decoded advisory and, for Debian, its fixed version parsed.
type memoAdvisory struct {
	dbTypes.Advisory
	fixed    debVersion
	fixedErr error
}

type memoVulnerability struct {
	id   string
	vuln dbTypes.Vulnerability
	err  error
	size int
}

// vulnerabilitySize estimates the memory a decoded record takes.
func vulnerabilitySize(id string, v dbTypes.Vulnerability) int {
	n := 512 + len(id) + len(v.Title) + len(v.Description) + len(v.Severity) + 48*len(v.VendorSeverity) + 160*len(v.CVSS) //nolint:staticcheck // SA1019: Severity is still filled
	for _, r := range v.References {
		n += 16 + len(r)
	}
	for _, c := range v.CweIDs {
		n += 16 + len(c)
	}
	return n
}

func newDBMemo() *dbMemo {
	return &dbMemo{maxAdv: memoMaxAdvisories, maxVulnSz: memoMaxVulnerabilitySize}
}

// use empties the memo when digest is not the DB it holds; the caller holds the DB still.
func (m *dbMemo) use(digest string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.digest == digest && m.advByKey != nil {
		return
	}
	m.digest = digest
	m.advLRU, m.advByKey, m.advCount = list.New(), map[string]*list.Element{}, 0
	m.vulnLRU, m.vulnByID, m.vulnSize = list.New(), map[string]*list.Element{}, 0
}

// advisories returns the advisories of pkgName in bucketName, as trivy-db's GetAdvisories returns
// them. The slice, and what its advisories point to (VendorIDs, Custom, DataSource), are shared
// between matches: callers read them only (debianDriver copies the DataSource it hands on).
func (m *dbMemo) advisories(bucketName, pkgName string) ([]memoAdvisory, error) {
	key := bucketName + "\x00" + pkgName
	m.mu.Lock()
	if el, ok := m.advByKey[key]; ok {
		m.advLRU.MoveToFront(el)
		m.mu.Unlock()
		return el.Value.(*memoAdvisories).items, nil
	}
	m.mu.Unlock()
	advs, err := trivydb.Config{}.GetAdvisories(bucketName, pkgName)
	if err != nil {
		return nil, err
	}
	items := make([]memoAdvisory, len(advs))
	for i, adv := range advs {
		items[i].Advisory = adv
		if adv.FixedVersion != "" {
			var fixed version.Version
			fixed, items[i].fixedErr = version.NewVersion(adv.FixedVersion)
			items[i].fixed = newDebVersion(fixed)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.advByKey == nil {
		return items, nil
	}
	if _, ok := m.advByKey[key]; !ok && len(items) <= m.maxAdv {
		m.advByKey[key] = m.advLRU.PushFront(&memoAdvisories{key: key, items: items})
		m.advCount += max(len(items), 1)
		for m.advCount > m.maxAdv {
			last := m.advLRU.Back()
			e := last.Value.(*memoAdvisories)
			m.advLRU.Remove(last)
			delete(m.advByKey, e.key)
			m.advCount -= max(len(e.items), 1)
		}
	}
	return items, nil
}

// vulnerability returns the record of id, as trivy-db's GetVulnerability returns it. The map
// FillInfo writes to (VendorSeverity) is a copy; the rest (References, CVSS, dates) is shared, and
// nothing after FillInfo writes to it. The memo holds the DB still (its callers are inside
// DB.View), so what it reads is the DB its digest names.
func (m *dbMemo) vulnerability(id string) (dbTypes.Vulnerability, error) {
	var e *memoVulnerability
	m.mu.Lock()
	if el, ok := m.vulnByID[id]; ok {
		m.vulnLRU.MoveToFront(el)
		e = el.Value.(*memoVulnerability)
	}
	m.mu.Unlock()
	if e == nil {
		vuln, err := trivydb.Config{}.GetVulnerability(id)
		entry := &memoVulnerability{id: id, vuln: vuln, err: err, size: vulnerabilitySize(id, vuln)}
		m.mu.Lock()
		if m.vulnByID != nil && entry.size <= m.maxVulnSz {
			if _, dup := m.vulnByID[id]; !dup {
				m.vulnByID[id] = m.vulnLRU.PushFront(entry)
				m.vulnSize += entry.size
				for m.vulnSize > m.maxVulnSz {
					last := m.vulnLRU.Back()
					e := last.Value.(*memoVulnerability)
					m.vulnLRU.Remove(last)
					delete(m.vulnByID, e.id)
					m.vulnSize -= e.size
				}
			}
		}
		m.mu.Unlock()
		e = entry
	}
	if e.err != nil {
		return dbTypes.Vulnerability{}, e.err
	}
	vuln := e.vuln
	// FillInfo adds package-specific severities to VendorSeverity.
	vuln.VendorSeverity = maps.Clone(vuln.VendorSeverity)
	return vuln, nil
}

// memoOperation is trivy-db's DB access (what Trivy's vulnerability client reads through) with
// vulnerability records read from the memo.
type memoOperation struct {
	trivydb.Config
	memo *dbMemo
}

func (o memoOperation) GetVulnerability(id string) (dbTypes.Vulnerability, error) {
	return o.memo.vulnerability(id)
}

// debianDriver is Trivy's Debian detector (pkg/detector/ospkg/debian, Trivy v0.74) with each
// package's advisories read from the memo, their fixed versions parsed once per DB. It decides
// exactly as Trivy does: the same bucket (the major release), the same lookup (the source name),
// the same version rules (go-deb-version's parsing, and its comparison done without regular
// expressions: debversion.go) and the same fields on each finding. TestMatchEqualsTrivyScanTarget compares it with the Trivy release linked in.
type debianDriver struct {
	trivy *debian.Scanner
	memo  *dbMemo
}

var _ driver.Driver = debianDriver{}

func newDebianDriver(memo *dbMemo) debianDriver {
	return debianDriver{trivy: debian.NewScanner(), memo: memo}
}

// IsSupportedVersion is Trivy's.
func (d debianDriver) IsSupportedVersion(ctx context.Context, family ftypes.OSType, osVer string) bool {
	return d.trivy.IsSupportedVersion(ctx, family, osVer)
}

// Detect returns the findings of pkgs, as debian.Scanner.Detect does.
func (d debianDriver) Detect(ctx context.Context, osVer string, _ *ftypes.Repository, pkgs []ftypes.Package) ([]types.DetectedVulnerability, error) {
	osVer = osver.Major(osVer)
	bucketName := bucket.NewDebian(osVer).Name()
	var vulns []types.DetectedVulnerability
	for _, pkg := range pkgs {
		parsed, err := version.NewVersion(utils.FormatSrcVersion(pkg))
		if err != nil {
			log.DebugContext(ctx, "Installed package version error", log.Err(err))
			continue
		}
		sourceVersion := newDebVersion(parsed)
		advisories, err := d.memo.advisories(bucketName, pkg.SrcName)
		if err != nil {
			return nil, xerrors.Errorf("failed to get debian advisories: %w", err)
		}
		installed := utils.FormatVersion(pkg)
		for i := range advisories {
			adv := &advisories[i]
			// Unfixed: no version to compare. As Trivy, a fixed version that does not parse
			// drops the advisory.
			if adv.FixedVersion != "" {
				if adv.fixedErr != nil {
					log.DebugContext(ctx, "Failed to parse the fixed version",
						log.String("version", adv.FixedVersion), log.Err(adv.fixedErr))
					continue
				}
				if debCompare(sourceVersion, adv.fixed) >= 0 {
					continue
				}
			}
			vuln := types.DetectedVulnerability{
				VulnerabilityID:  adv.VulnerabilityID,
				VendorIDs:        adv.VendorIDs,
				PkgID:            pkg.ID,
				PkgName:          pkg.Name,
				InstalledVersion: installed,
				FixedVersion:     adv.FixedVersion,
				PkgIdentifier:    pkg.Identifier,
				Status:           adv.Status,
				Layer:            pkg.Layer,
				Custom:           adv.Custom,
			}
			if adv.DataSource != nil {
				// trivy-db gives every advisory its own copy; the memo's is shared.
				ds := *adv.DataSource
				vuln.DataSource = &ds
			}
			if adv.Severity != dbTypes.SeverityUnknown {
				// Package-specific severity
				vuln.SeveritySource = trivyvuln.Debian
				vuln.Vulnerability = dbTypes.Vulnerability{Severity: adv.Severity.String()} //nolint:staticcheck // SA1019: as Trivy's debian.Scanner sets it
			}
			vulns = append(vulns, vuln)
		}
	}
	return vulns, nil
}
