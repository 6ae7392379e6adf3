package controllers

import (
	"hash/fnv"
	"slices"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/scanner"
)

// Matches is what the report controller knows, in memory, of each report's last match: the DB it
// was matched against and the findings it had, and how far the re-match of the DB in use has got.
// A re-match that finds what a report says writes nothing, so this is where the truth about such
// reports lives until their status is refreshed (--report-refresh-interval): policies' freshness
// and the VulnerabilityDatabase's status read it. It is lost with the process; a restart matches
// every report again against the DB it loads, from the kept inventories.
type Matches struct {
	mu      sync.Mutex
	reports map[types.NamespacedName]matchRecord
	rematch rematch
	changed chan event.GenericEvent
}

// matchRecord is a report's last successful match (known by UID: a report deleted and made
// again is new).
type matchRecord struct {
	uid types.UID
	db  scanner.DBInfo
	// findings are the keys of every finding (sorted), the cut ones too; nil when the report was
	// found current without a match (the status then has them).
	findings []uint64
}

// rematch is the progress of matching the reports against the DB with the given digest.
type rematch struct {
	digest string
	state  map[types.NamespacedName]rematchState
	counts securityv1alpha1.Rematch
}

type rematchState int

const (
	rematchPending rematchState = iota
	rematchCurrent
	rematchFailed
)

// NewMatches returns an empty Matches.
func NewMatches() *Matches {
	return &Matches{reports: map[types.NamespacedName]matchRecord{}, changed: make(chan event.GenericEvent, 1)}
}

// Changed returns a channel that gets an event when the re-match progresses, for
// controller-runtime's source.Channel; a slow reader misses intermediate events, never the latest.
func (m *Matches) Changed() <-chan event.GenericEvent { return m.changed }

func (m *Matches) signal() {
	select {
	case m.changed <- event.GenericEvent{}:
	default:
	}
}

// Begin starts the re-match of the DB digest over the reports keys.
func (m *Matches) Begin(digest string, keys []types.NamespacedName) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rematch = rematch{digest: digest, state: make(map[types.NamespacedName]rematchState, len(keys))}
	for _, k := range keys {
		m.rematch.state[k] = rematchPending
	}
	m.rematch.counts = securityv1alpha1.Rematch{Reports: int32(len(keys))}
	m.signal()
}

// Matched records that the report key (uid) was matched against db with findings (nil: found
// current without a match; the findings known before are kept).
func (m *Matches) Matched(key types.NamespacedName, uid types.UID, db scanner.DBInfo, findings []uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	prev, ok := m.reports[key]
	if findings == nil && ok && prev.uid == uid {
		findings = prev.findings
	}
	m.reports[key] = matchRecord{uid: uid, db: db, findings: findings}
	if db.Digest == m.rematch.digest {
		m.setLocked(key, rematchCurrent)
	}
}

// Failed records that the report key could not be matched against the DB in use.
func (m *Matches) Failed(key types.NamespacedName) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setLocked(key, rematchFailed)
}

// Skip takes the report key out of the re-match (its namespace is excluded).
func (m *Matches) Skip(key types.NamespacedName) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropLocked(key)
}

// Forget drops what is known of a deleted report.
func (m *Matches) Forget(key types.NamespacedName) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.reports, key)
	m.dropLocked(key)
}

func (m *Matches) setLocked(key types.NamespacedName, to rematchState) {
	from, ok := m.rematch.state[key]
	if !ok || from == to {
		return
	}
	m.count(from, -1)
	m.count(to, 1)
	m.rematch.state[key] = to
	m.signal()
}

func (m *Matches) dropLocked(key types.NamespacedName) {
	from, ok := m.rematch.state[key]
	if !ok {
		return
	}
	m.count(from, -1)
	m.rematch.counts.Reports--
	delete(m.rematch.state, key)
	m.signal()
}

func (m *Matches) count(s rematchState, n int32) {
	switch s {
	case rematchCurrent:
		m.rematch.counts.Current += n
	case rematchFailed:
		m.rematch.counts.Failed += n
	}
}

// Lookup returns the last match of the report key with uid.
func (m *Matches) Lookup(key types.NamespacedName, uid types.UID) (scanner.DBInfo, []uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.reports[key]
	if !ok || r.uid != uid {
		return scanner.DBInfo{}, nil, false
	}
	return r.db, r.findings, true
}

// Progress returns the re-match's DB digest and counts, and whether every report was tried.
func (m *Matches) Progress() (string, securityv1alpha1.Rematch, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.rematch.counts
	return m.rematch.digest, c, c.Current+c.Failed >= c.Reports
}

// findingKey identifies a finding across matches: the same vulnerability in the same package
// version at the same place.
func findingKey(id, pkg, version, target, pkgType string) uint64 {
	h := fnv.New64a()
	for _, s := range []string{id, pkg, version, target, pkgType} {
		_, _ = h.Write([]byte(s))
		_, _ = h.Write([]byte{0})
	}
	return h.Sum64()
}

// findingKeys returns the sorted keys of findings.
func findingKeys(findings []scanner.Finding) []uint64 {
	out := make([]uint64, 0, len(findings))
	for _, f := range findings {
		out = append(out, findingKey(f.ID, f.Package, f.InstalledVersion, f.Target, f.PackageType))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// changesOf compares findings with those known before (sorted keys; when listed is set, only
// the report's listed findings are known, and a finding less severe than the last listed one
// may have been cut: it is not counted as new). It returns nil when nothing appeared or went,
// and the new findings by severity.
func changesOf(before []uint64, listed []securityv1alpha1.Vulnerability, omitted bool, findings []scanner.Finding, db string, now time.Time) (*securityv1alpha1.FindingChanges, map[securityv1alpha1.Severity]int) {
	if before == nil {
		before = make([]uint64, 0, len(listed))
		for _, v := range listed {
			before = append(before, findingKey(v.ID, v.Package, v.InstalledVersion, v.Target, v.PackageType))
		}
		slices.Sort(before)
	} else {
		omitted = false
	}
	floor := len(securityv1alpha1.Severities)
	if omitted && len(listed) > 0 {
		floor = severityRank(listed[len(listed)-1].Severity)
	}
	now = now.UTC().Truncate(time.Second)
	c := &securityv1alpha1.FindingChanges{VulnerabilityDB: db}
	bySeverity := map[securityv1alpha1.Severity]int{}
	seen := map[uint64]bool{}
	for _, f := range findings {
		k := findingKey(f.ID, f.Package, f.InstalledVersion, f.Target, f.PackageType)
		if seen[k] {
			continue // the same finding at another path counts once, as its key does
		}
		seen[k] = true
		if _, found := slices.BinarySearch(before, k); found {
			continue
		}
		if omitted && severityRank(securityv1alpha1.Severity(f.Severity)) >= floor {
			continue
		}
		c.New++
		bySeverity[securityv1alpha1.Severity(f.Severity)]++
		if len(c.NewIDs) < securityv1alpha1.MaxChangeIDs && !slices.Contains(c.NewIDs, f.ID) {
			c.NewIDs = append(c.NewIDs, f.ID)
		}
	}
	// Every finding known before is a real one: those not seen now went.
	for _, k := range before {
		if !seen[k] {
			c.Fixed++
		}
	}
	if c.New == 0 && c.Fixed == 0 {
		return nil, nil
	}
	detected := metav1.NewTime(now)
	c.DetectedAt = &detected
	return c, bySeverity
}

// severityRank is a severity's place in Severities, most severe first; unknown ones last.
func severityRank(s securityv1alpha1.Severity) int {
	if i := slices.Index(securityv1alpha1.Severities, s); i >= 0 {
		return i
	}
	return len(securityv1alpha1.Severities) - 1
}
