package controllers_test

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testenv"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/vulndb"
)

// The suite runs the real reconcilers and the webhook in a manager against a real API server, a
// real registry (with a second, private one behind basic auth) and a real DB published to the
// registry (internal/testsuite).
var (
	suite    *testsuite.Suite
	env      *testenv.Env
	reg      *testutil.Registry
	private  *testutil.Registry
	db       *vulndb.Manager
	scan     *scanner.Scanner
	dbRepo   = testsuite.DBRepository
	testTB   *testsuite.TB
	cacheDir string
	// receiverAddress is where the registry notification receiver listens.
	receiverAddress string
)

const (
	retention      = 2 * time.Second
	reportMaxBytes = 16 << 10
)

// baseAdvisories is the DB the suite starts with.
const baseAdvisories = `
updatedAt: 2026-11-01T00:00:00Z
advisories:
- {id: CVE-2026-1001, ecosystem: alpine 3.22, package: openssl, fixedVersion: 3.5.2-r0, severity: CRITICAL}
- {id: CVE-2026-1002, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r20, severity: HIGH}
- {id: CVE-2026-5301, ecosystem: "maven::GitHub Security Advisory Maven", package: "org.apache.logging.log4j:log4j-core", vulnerableVersions: ["<2.20.0"], patchedVersions: ["2.20.0"], severity: CRITICAL}
`

func TestMain(m *testing.M) {
	var err error
	if receiverAddress, err = testsuite.FreeAddress(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// BenchmarkClusterScale runs once with the layer cache and once without it
	// (IMAGEGUARD_TEST_LAYER_CACHE_MAX_BYTES=-1).
	var layerCache int64
	if v := os.Getenv("IMAGEGUARD_TEST_LAYER_CACHE_MAX_BYTES"); v != "" {
		if layerCache, err = strconv.ParseInt(v, 10, 64); err != nil {
			fmt.Fprintln(os.Stderr, "IMAGEGUARD_TEST_LAYER_CACHE_MAX_BYTES:", err)
			os.Exit(2)
		}
	}
	suite, err = testsuite.Start(testsuite.Options{
		AdmissionLabel: admissionTestLabel, DB: dbSpec(), LayerCacheMaxBytes: layerCache,
		Controllers: controllers.Options{
			ScanConcurrency: 2, ReportMaxBytes: reportMaxBytes, ReportRetention: retention, RescanInterval: time.Hour,
			ExcludedNamespaces: []string{"kube-system"},
			Admission:          &controllers.AdmissionOptions{ExcludedNamespaces: []string{"kube-system"}},
			// Registry scans list the in-process registry unpaced, and retry soon.
			RegistryScanRequestsPerSecond: 1000, RegistryScanRetry: 2 * time.Second, ReceiverAddress: receiverAddress,
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	env, reg, private, db, scan, testTB, cacheDir = suite.Env, suite.Registry, suite.Private, suite.DB, suite.Scanner, suite.TB, suite.CacheDir
	code := m.Run()
	suite.Stop()
	os.Exit(code)
}

// bigPackages is how many packages of the "big" image have a finding each.
const bigPackages = 300

// zlibAdvisory is what the DB update test adds.
var zlibAdvisory = testutil.AdvisorySpec{ID: "CVE-2026-1003", Ecosystem: "alpine 3.22", Package: "zlib", FixedVersion: "1.3.2-r0", Severity: "HIGH"}

// dbSpec is the suite's DB: the base advisories, one per big package, and extra ones.
func dbSpec(extra ...testutil.AdvisorySpec) *testutil.DBSpec {
	spec, err := testutil.ParseAdvisories([]byte(baseAdvisories))
	if err != nil {
		panic(err)
	}
	for i := range bigPackages {
		spec.Advisories = append(spec.Advisories, testutil.AdvisorySpec{
			ID: fmt.Sprintf("CVE-2026-%05d", 20000+i), Ecosystem: "alpine 3.22", Package: fmt.Sprintf("big%03d", i),
			FixedVersion: "2.0.0-r0", Severity: []string{"CRITICAL", "HIGH", "MEDIUM", "LOW"}[i%4],
			Title: "a long enough title to make every finding take some room in the report object",
		})
	}
	spec.Advisories = append(spec.Advisories, extra...)
	return spec
}
