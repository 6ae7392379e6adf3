package testutil

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dbtypes "github.com/aquasecurity/trivy-db/pkg/types"
	bolt "go.etcd.io/bbolt"
)

// RealScaleSpec sizes a generated vulnerability DB. RealScale is of the order of the published
// trivy.db (474 MB unpacked in mid 2024): hundreds of thousands of vulnerabilities with
// descriptions, CVSS vectors and references, over tens of thousands of packages in several OS
// buckets and language ecosystems.
type RealScaleSpec struct {
	// Vulnerabilities is the number of vulnerability records (the "vulnerability" bucket).
	Vulnerabilities int
	// OSPackages is the number of source packages of each OS bucket.
	OSPackages int
	// LanguagePackages is the number of packages of each language ecosystem.
	LanguagePackages int
	// AdvisoriesPerVulnerability is how many (bucket, package) pairs one vulnerability affects
	// on average, as a CVE is tracked by several distributions.
	AdvisoriesPerVulnerability int
	// Seed makes the DB reproducible.
	Seed uint64
}

// RealScale is the DB of the scale benchmarks: 300,000 vulnerabilities, 900,000 advisories over
// 36,000 OS packages (9 buckets) and 30,000 language packages (6 ecosystems).
var RealScale = RealScaleSpec{Vulnerabilities: 300_000, OSPackages: 4_000, LanguagePackages: 5_000, AdvisoriesPerVulnerability: 3, Seed: 1}

// RealScaleOSBuckets and RealScaleLanguageBuckets are the buckets a real-scale DB fills.
var (
	RealScaleOSBuckets = []string{
		"debian 11", "debian 12", "debian 13", "alpine 3.20", "alpine 3.21", "alpine 3.22",
		"ubuntu 22.04", "ubuntu 24.04", "rocky 9",
	}
	RealScaleLanguageBuckets = []string{
		BucketNPM, BucketGo, "pip::GitHub Security Advisory pip", "maven::GitHub Security Advisory Maven",
		"rubygems::GitHub Security Advisory RubyGems", "nuget::GitHub Security Advisory NuGet",
	}
)

var realScaleSources = map[string]dbtypes.DataSource{
	"ubuntu": {ID: "ubuntu", Name: "Ubuntu CVE Tracker", URL: "https://git.launchpad.net/ubuntu-cve-tracker"},
	"rocky":  {ID: "rocky", Name: "Rocky Linux updateinfo", URL: "https://download.rockylinux.org/pub/rocky/"},
}

// RealScalePackageName is the name of package i of a real-scale DB's buckets: the same names in
// every OS bucket (as distributions share upstream names), and in every ecosystem.
func RealScalePackageName(i int) string {
	return fmt.Sprintf("%s%s-%d", realScaleWords[i%len(realScaleWords)], realScaleWords[(i/len(realScaleWords))%len(realScaleWords)], i)
}

// RealScaleOSVersion and RealScaleLanguageVersion are the versions images of real-scale
// packages install. As in the real DB, most of a package's advisories were fixed in older
// versions: fixed versions run from 1.x to 40.x, so with 38.0.0 about one fixed advisory in 20
// applies, and the 1 in 20 that have no fix.
const (
	RealScaleOSVersion       = "38.0.0-1"
	RealScaleLanguageVersion = "38.0.0"
)

var realScaleWords = strings.Fields(`lib core util net crypt xml json http ssl zip image font audio video
	gtk qt sql py perl ruby node java go rust dbus sys kernel boot mail ldap krb sasl pam
	curl wget git svn vim emacs nano bash zsh tar gzip bzip xz lz snappy proto grpc yaml`)

var loremWords = strings.Fields(`a flaw was found in the handling of crafted input which allows a remote
	attacker to cause a denial of service or possibly execute arbitrary code via a buffer overflow
	in the parser when processing specially crafted files an integer overflow leads to heap memory
	corruption out of bounds read use after free null pointer dereference improper validation of
	certificate chains allows man in the middle attacks affected versions before the fix`)

// BuildRealScaleDB writes a generated DB of spec to <dir>/db, as BuildDB does (trivy-db's bucket
// layout and JSON values, metadata.json beside it).
func BuildRealScaleDB(dir string, spec RealScaleSpec) error {
	updated := time.Now().UTC().Truncate(time.Second)
	// Not synced while written: a DB cut short is rebuilt (RealScaleDBDir renames it into place
	// only once whole).
	opts := &bolt.Options{Timeout: 5 * time.Second, NoSync: true, NoFreelistSync: true}
	return writeBoltDB(dir, opts, updated, updated.Add(24*time.Hour), func(bdb *bolt.DB) error {
		return writeRealScale(bdb, spec)
	})
}

// realScaleAdvisory is one (bucket, package, vulnerability) of a generated DB.
type realScaleAdvisory struct {
	vuln  int
	fixed bool
}

func writeRealScale(bdb *bolt.DB, spec RealScaleSpec) error {
	rng := rand.New(rand.NewPCG(spec.Seed, spec.Seed^0x9e3779b97f4a7c15))
	buckets := append(append([]string{}, RealScaleOSBuckets...), RealScaleLanguageBuckets...)
	packagesOf := func(bucket string) int {
		if strings.Contains(bucket, "::") {
			return spec.LanguagePackages
		}
		return spec.OSPackages
	}
	// Which advisories each bucket's packages get: each vulnerability goes to a few buckets and
	// one package in each, skewed so that some packages have hundreds (openssl's, the kernel's)
	// and most a handful.
	byBucket := make([]map[int][]realScaleAdvisory, len(buckets))
	for i := range byBucket {
		byBucket[i] = map[int][]realScaleAdvisory{}
	}
	for v := range spec.Vulnerabilities {
		n := 1 + rng.IntN(2*spec.AdvisoriesPerVulnerability-1)
		for range n {
			b := rng.IntN(len(buckets))
			pkgs := packagesOf(buckets[b])
			// A skewed pick: the square of a uniform number favours low indexes.
			u := rng.Float64()
			p := int(u * u * float64(pkgs))
			byBucket[b][p] = append(byBucket[b][p], realScaleAdvisory{vuln: v, fixed: rng.IntN(20) != 0})
		}
	}
	// One transaction per bucket, so that the dirty pages of one are written before the next.
	for b, bucket := range buckets {
		err := bdb.Update(func(tx *bolt.Tx) error {
			root, err := tx.CreateBucketIfNotExists([]byte(bucket))
			if err != nil {
				return err
			}
			root.FillPercent = 0.9
			for p, advs := range byBucket[b] {
				pkg, err := root.CreateBucketIfNotExists([]byte(RealScalePackageName(p)))
				if err != nil {
					return err
				}
				for _, a := range advs {
					adv := &dbtypes.Advisory{}
					lang := strings.Contains(bucket, "::")
					switch {
					case lang:
						fixed := fmt.Sprintf("%d.%d.%d", 1+a.vuln%40, a.vuln%10, a.vuln%7)
						adv.VulnerableVersions = []string{"<" + fixed}
						adv.PatchedVersions = []string{fixed}
						if !a.fixed {
							adv.VulnerableVersions, adv.PatchedVersions = []string{">=0.0.0"}, nil
						}
					case a.fixed:
						adv.FixedVersion = fmt.Sprintf("%d.%d.%d-%d", 1+a.vuln%40, a.vuln%10, a.vuln%7, 1+a.vuln%3)
					default:
						adv.Status = dbtypes.StatusAffected
					}
					if strings.HasPrefix(bucket, "debian ") && a.vuln%3 == 0 {
						// Debian's urgency: a severity of the package's own.
						adv.Severity = dbtypes.Severity(1 + a.vuln%4)
					}
					if err := putJSON(pkg, realScaleID(a.vuln), adv); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return bdb.Update(func(tx *bolt.Tx) error {
		ds, err := tx.CreateBucketIfNotExists([]byte("data-source"))
		if err != nil {
			return err
		}
		for _, bucket := range buckets {
			src, err := (&DBSpec{}).dataSource(bucket)
			if err != nil {
				name, _, _ := strings.Cut(bucket, " ")
				src = realScaleSources[name]
			}
			if err := putJSON(ds, bucket, src); err != nil {
				return err
			}
		}
		vb, err := tx.CreateBucketIfNotExists([]byte("vulnerability"))
		if err != nil {
			return err
		}
		vb.FillPercent = 0.95
		severities := []dbtypes.Severity{dbtypes.SeverityLow, dbtypes.SeverityMedium, dbtypes.SeverityMedium, dbtypes.SeverityHigh, dbtypes.SeverityCritical}
		for v := range spec.Vulnerabilities {
			sev := severities[rng.IntN(len(severities))]
			score := []float64{3.1, 5.9, 7.5, 9.8}[sev-1]
			id := realScaleID(v)
			desc := lorem(rng, 40+rng.IntN(60))
			refs := make([]string, 3+rng.IntN(5))
			for i := range refs {
				refs[i] = fmt.Sprintf("https://%s/%s/%d", []string{"nvd.nist.gov/vuln/detail", "security-tracker.debian.org/tracker", "github.com/advisories", "ubuntu.com/security", "access.redhat.com/security/cve"}[i%5], id, i)
			}
			vuln := dbtypes.Vulnerability{
				Title:       lorem(rng, 6+rng.IntN(6)),
				Description: desc,
				Severity:    sev.String(), //nolint:staticcheck // SA1019: the real DB still fills it
				CweIDs:      []string{fmt.Sprintf("CWE-%d", 20+rng.IntN(900))},
				VendorSeverity: dbtypes.VendorSeverity{
					"nvd": sev, "debian": dbtypes.Severity(1 + rng.IntN(4)), "ghsa": sev,
				},
				CVSS: dbtypes.VendorCVSS{
					"nvd":  {V3Vector: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", V3Score: score, V2Vector: "AV:N/AC:L/Au:N/C:P/I:P/A:P", V2Score: score * 0.8},
					"ghsa": {V3Vector: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", V3Score: score},
				},
				References:       refs,
				PublishedDate:    new(time.Date(2000+v%26, time.Month(1+v%12), 1+v%28, 0, 0, 0, 0, time.UTC)),
				LastModifiedDate: new(time.Date(2026, time.Month(1+v%12), 1+v%28, 0, 0, 0, 0, time.UTC)),
			}
			if err := putJSON(vb, id, vuln); err != nil {
				return err
			}
		}
		return nil
	})
}

// realScaleID is the ID of vulnerability v: CVE-<year>-<number>, sorted as v is.
func realScaleID(v int) string { return fmt.Sprintf("CVE-%d-%07d", 2000+v/20_000, v) }

func lorem(rng *rand.Rand, words int) string {
	var b strings.Builder
	for i := range words {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(loremWords[rng.IntN(len(loremWords))])
	}
	return b.String()
}

var realScaleOnce sync.Map

// RealScaleDB returns a folder holding db/ with the RealScale DB, built once and kept under the
// user's cache folder ($XDG_CACHE_HOME/imageguard/testdb/<spec hash>), so that test runs after the
// first reuse it. It is read-only to callers: copy it to change it.
func RealScaleDB(tb testing.TB) string {
	tb.Helper()
	dir, err := RealScaleDBDir(RealScale)
	if err != nil {
		tb.Fatal(err)
	}
	return dir
}

// RealScaleDBDir is RealScaleDB for any spec, without a testing.TB (for hack/ programs).
func RealScaleDBDir(spec RealScaleSpec) (string, error) {
	raw, _ := json.Marshal(spec)
	sum := sha256.Sum256(append(raw, "realscale-v3"...))
	key := hex.EncodeToString(sum[:8])
	once, _ := realScaleOnce.LoadOrStore(key, &realScaleBuild{})
	b := once.(*realScaleBuild)
	b.once.Do(func() { b.dir, b.err = buildRealScaleCached(key, spec) })
	return b.dir, b.err
}

type realScaleBuild struct {
	once sync.Once
	dir  string
	err  error
}

func buildRealScaleCached(key string, spec RealScaleSpec) (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "imageguard", "testdb", key)
	if _, err := os.Stat(filepath.Join(dir, "db", "metadata.json")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), key+".tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := BuildRealScaleDB(tmp, spec); err != nil {
		return "", err
	}
	// Another process may have finished first: either copy is good.
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, "db", "metadata.json")); serr == nil {
			return dir, nil
		}
		return "", err
	}
	return dir, nil
}
