package scanner

import (
	"container/list"
	"context"
	"maps"
	"strconv"
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
	"github.com/aquasecurity/trivy/pkg/types"
)

// Bounds of the memo: the advisories it keeps decoded (about 300 bytes each with their parsed
// version; a package with none counts as one), the vulnerability records, by their estimated
// size (vulnerabilitySize), the language packages' detections (about 200 bytes a finding; a
// package with none counts as one) and the Debian advisories that apply to each source version
// (8 bytes each): some 100 MiB at most.
const (
	memoMaxAdvisories        = 150_000
	memoMaxVulnerabilitySize = 24 << 20
	memoMaxLibraryFindings   = 100_000
	memoMaxDebianMatches     = 100_000
)

// dbMemo keeps, for the DB in use (by digest), what re-matches read again and again: each package's
// advisories as trivy-db decodes them (with their fixed versions parsed once), the
// vulnerability records Trivy's FillInfo reads for every finding, what Trivy's library detector
// finds for each language package, and which advisories apply to each Debian source version. Trivy decodes advisories and records from JSON on
// every read, and parses every version range again; over a cluster's re-match after a DB swap the
// same few thousand packages and vulnerabilities are read for every image. It is emptied when the
// DB changes, and bounded (least recently used first out).
type dbMemo struct {
	mu     sync.Mutex
	digest string

	advs       *lru[advisoriesKey, []memoAdvisory]
	vulns      *lru[string, *memoVulnerability]
	libraries  *lru[libraryKey, []libraryFinding]
	debMatches *lru[debianKey, []int32]

	maxAdv, maxVulnSz, maxLib, maxDeb int
}

// The memo's keys: structs, so that no field's content can make two keys equal.
type (
	advisoriesKey struct{ bucket, pkg string }
	libraryKey    struct{ typ, id, name, version string }
	debianKey     struct{ bucket, src, version string }
)

// keyWeight is what a key's bytes add to an entry's weight, in the memo's units (an advisory,
// some 300 bytes): an image's names and versions are its own, of any length.
func keyWeight(fields ...string) int {
	n := 0
	for _, f := range fields {
		n += len(f)
	}
	return n / 256
}

// lru is a map bounded by the total weight of its values, the least recently used out first;
// its owner locks it. A nil lru (a memo before its first use) keeps nothing.
type lru[K comparable, V any] struct {
	order  *list.List // of *memoEntry[K, V], most recent first
	byKey  map[K]*list.Element
	weight int
	max    int
}

type memoEntry[K comparable, V any] struct {
	key    K
	val    V
	weight int
}

func newLRU[K comparable, V any](maxWeight int) *lru[K, V] {
	return &lru[K, V]{order: list.New(), byKey: map[K]*list.Element{}, max: maxWeight}
}

func (c *lru[K, V]) get(key K) (V, bool) {
	if c == nil {
		var zero V
		return zero, false
	}
	el, ok := c.byKey[key]
	if !ok {
		var zero V
		return zero, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*memoEntry[K, V]).val, true
}

// add keeps val unless key is kept already or val alone is heavier than the bound.
func (c *lru[K, V]) add(key K, val V, weight int) {
	if c == nil {
		return
	}
	if _, ok := c.byKey[key]; ok || weight > c.max {
		return
	}
	c.byKey[key] = c.order.PushFront(&memoEntry[K, V]{key: key, val: val, weight: weight})
	c.weight += weight
	for c.weight > c.max {
		last := c.order.Back()
		e := last.Value.(*memoEntry[K, V])
		c.order.Remove(last)
		delete(c.byKey, e.key)
		c.weight -= e.weight
	}
}

// memoAdvisory is a decoded advisory and, for Debian, its fixed version parsed.
type memoAdvisory struct {
	dbTypes.Advisory
	fixed    debVersion
	fixedErr error
}

type memoVulnerability struct {
	vuln dbTypes.Vulnerability
	err  error
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
	return &dbMemo{maxAdv: memoMaxAdvisories, maxVulnSz: memoMaxVulnerabilitySize, maxLib: memoMaxLibraryFindings, maxDeb: memoMaxDebianMatches}
}

// use empties the memo when digest is not the DB it holds; the caller holds the DB still.
func (m *dbMemo) use(digest string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.digest == digest && m.advs != nil {
		return
	}
	m.digest = digest
	m.advs = newLRU[advisoriesKey, []memoAdvisory](m.maxAdv)
	m.vulns = newLRU[string, *memoVulnerability](m.maxVulnSz)
	m.libraries = newLRU[libraryKey, []libraryFinding](m.maxLib)
	m.debMatches = newLRU[debianKey, []int32](m.maxDeb)
}

// advisories returns the advisories of pkgName in bucketName, as trivy-db's GetAdvisories returns
// them. The slice, and what its advisories point to (VendorIDs, Custom, DataSource), are shared
// between matches: callers read them only (debianDriver copies the DataSource it hands on).
func (m *dbMemo) advisories(bucketName, pkgName string) ([]memoAdvisory, error) {
	key := advisoriesKey{bucketName, pkgName}
	m.mu.Lock()
	items, ok := m.advs.get(key)
	m.mu.Unlock()
	if ok {
		return items, nil
	}
	advs, err := trivydb.Config{}.GetAdvisories(bucketName, pkgName)
	if err != nil {
		return nil, err
	}
	items = make([]memoAdvisory, len(advs))
	for i, adv := range advs {
		items[i].Advisory = adv
		if adv.FixedVersion != "" {
			var fixed version.Version
			fixed, items[i].fixedErr = version.NewVersion(adv.FixedVersion)
			items[i].fixed = newDebVersion(fixed)
		}
	}
	m.mu.Lock()
	m.advs.add(key, items, max(len(items), 1)+keyWeight(bucketName, pkgName))
	m.mu.Unlock()
	return items, nil
}

// vulnerability returns the record of id, as trivy-db's GetVulnerability returns it. The map
// FillInfo writes to (VendorSeverity) is a copy; the rest (References, CVSS, dates) is shared, and
// nothing after FillInfo writes to it. The memo holds the DB still (its callers are inside
// DB.View), so what it reads is the DB its digest names.
func (m *dbMemo) vulnerability(id string) (dbTypes.Vulnerability, error) {
	var e *memoVulnerability
	m.mu.Lock()
	e, _ = m.vulns.get(id)
	m.mu.Unlock()
	if e == nil {
		vuln, err := trivydb.Config{}.GetVulnerability(id)
		e = &memoVulnerability{vuln: vuln, err: err}
		m.mu.Lock()
		m.vulns.add(id, e, vulnerabilitySize(id, vuln))
		m.mu.Unlock()
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
	// The advisories that apply are found first and the findings, large structs, made at once.
	type match struct {
		pkg int
		adv *memoAdvisory
	}
	var matches []match
	for p := range pkgs {
		pkg := &pkgs[p]
		advisories, applying, err := d.memo.debianAdvisories(ctx, bucketName, pkg.SrcName, debFormatVersion(pkg.SrcEpoch, pkg.SrcVersion, pkg.SrcRelease))
		if err != nil {
			return nil, err
		}
		for _, i := range applying {
			matches = append(matches, match{pkg: p, adv: &advisories[i]})
		}
	}
	if len(matches) == 0 {
		return nil, nil
	}
	vulns := make([]types.DetectedVulnerability, len(matches))
	installed, last := "", -1
	for i, m := range matches {
		pkg, adv := &pkgs[m.pkg], m.adv
		if m.pkg != last {
			installed, last = debFormatVersion(pkg.Epoch, pkg.Version, pkg.Release), m.pkg
		}
		vuln := &vulns[i]
		*vuln = types.DetectedVulnerability{
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
	}
	return vulns, nil
}

// debianAdvisories returns the advisories of srcName in bucketName and the indexes of those that
// apply to srcVersion, as Trivy's Debian detector decides it, from the memo when it was asked
// before under the DB in use. A version that does not parse has none (Trivy skips the package).
// The memo keeps indexes, not the advisories: an answer never holds on to a list the memo of
// advisories let go, and the list is read again (the same, under one DB) when it did.
func (m *dbMemo) debianAdvisories(ctx context.Context, bucketName, srcName, srcVersion string) ([]memoAdvisory, []int32, error) {
	key := debianKey{bucketName, srcName, srcVersion}
	m.mu.Lock()
	applying, known := m.debMatches.get(key)
	m.mu.Unlock()
	if known && len(applying) == 0 {
		return nil, nil, nil
	}
	var advisories []memoAdvisory
	if known {
		var err error
		if advisories, err = m.advisories(bucketName, srcName); err != nil {
			return nil, nil, xerrors.Errorf("failed to get debian advisories: %w", err)
		}
		if int(applying[len(applying)-1]) < len(advisories) {
			return advisories, applying, nil
		}
		// Not the list the indexes were taken from: decided again.
	}
	applying = nil
	parsed, err := version.NewVersion(srcVersion)
	if err != nil {
		log.DebugContext(ctx, "Installed package version error", log.Err(err))
	} else {
		installed := newDebVersion(parsed)
		if advisories == nil {
			if advisories, err = m.advisories(bucketName, srcName); err != nil {
				return nil, nil, xerrors.Errorf("failed to get debian advisories: %w", err)
			}
		}
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
				if debCompare(installed, adv.fixed) >= 0 {
					continue
				}
			}
			applying = append(applying, int32(i))
		}
	}
	m.mu.Lock()
	m.debMatches.add(key, applying, max(len(applying), 1)+keyWeight(bucketName, srcName, srcVersion))
	m.mu.Unlock()
	return advisories, applying, nil
}

// debFormatVersion is Trivy's utils.FormatVersion and FormatSrcVersion ("epoch:version-release",
// without the parts that are not there), without fmt: it was a visible part of a re-match.
func debFormatVersion(epoch int, version, release string) string {
	v := version
	if release != "" {
		v = v + "-" + release
	}
	if epoch != 0 {
		v = strconv.Itoa(epoch) + ":" + v
	}
	return v
}
