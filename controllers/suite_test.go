package controllers_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/testenv"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/vulndb"
)

// The suite runs the real reconcilers in a manager against a real API server, a real registry
// (with a second, private one behind basic auth) and a real DB published to the registry.
var (
	env      *testenv.Env
	reg      *testutil.Registry
	private  *testutil.Registry
	db       *vulndb.Manager
	scan     *scanner.Scanner
	dbRepo   = "aquasecurity/trivy-db"
	testTB   = &tbAdapter{}
	cacheDir string
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
`

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.Level(zapLevel()))))
	var err error
	webhooks, err := testenv.ValidatingWebhooks(admissionTestLabel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "reading the webhook configuration: %v\n", err)
		return 1
	}
	env, err = testenv.Start(testenv.Options{PolicyReportCRDs: true, ValidatingWebhooks: webhooks})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot start the control plane: %v\n", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	defer testTB.cleanup()
	reg = testutil.NewRegistry(testTB)
	private = testutil.NewRegistry(testTB, testutil.WithBasicAuth("puller", "s3cret"))
	reg.PublishDB(testTB, dbRepo, "2", dbSpec())

	cacheDir, err = os.MkdirTemp("", "imageguard-controllers-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(cacheDir)
	client := registry.NewClient(registry.Options{InsecureHosts: []string{reg.Host(), private.Host()}})
	db, err = vulndb.New(vulndb.Options{
		Repositories: []string{reg.Host() + "/" + dbRepo + ":2"}, CacheDir: filepath.Join(cacheDir, "db"),
		CheckInterval: time.Hour, Registry: client, Log: logr.Discard(),
	})
	if err != nil {
		panic(err)
	}
	scan, err = scanner.New(scanner.Options{CacheDir: cacheDir, Timeout: time.Minute}, client, db)
	if err != nil {
		panic(err)
	}
	// The controller's own defaults (cmd/imageguard: --kube-api-qps, --kube-api-burst).
	mgrConfig := rest.CopyConfig(env.Config)
	mgrConfig.QPS, mgrConfig.Burst = 50, 100
	serving := env.Environment.WebhookInstallOptions
	mgr, err := ctrl.NewManager(mgrConfig, ctrl.Options{
		Scheme:  scheme.New(),
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   controllers.CacheOptions(),
		WebhookServer: webhook.NewServer(webhook.Options{
			Host: serving.LocalServingHost, Port: serving.LocalServingPort, CertDir: serving.LocalServingCertDir,
		}),
	})
	if err != nil {
		panic(err)
	}
	if err := mgr.Add(db); err != nil {
		panic(err)
	}
	err = controllers.Setup(mgr, controllers.Options{
		Registry: client, Scanner: scan, DB: db, ScanConcurrency: 2,
		ReportMaxBytes: reportMaxBytes, ReportRetention: retention, RescanInterval: time.Hour,
		ExcludedNamespaces: []string{"kube-system"},
		Admission: &controllers.AdmissionOptions{
			Registry: client, ResolveTimeout: 2 * time.Second, ExcludedNamespaces: []string{"kube-system"},
		},
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	// The DB manager downloads the DB at start: wait for it, so that its registry requests are
	// not counted by the first test.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, ok := db.Info(); ok {
			break
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "the vulnerability DB was not loaded: %v\n", db.LastError())
			cancel()
			return 1
		}
	}
	code := m.Run()
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintf(os.Stderr, "manager: %v\n", err)
	}
	return code
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

func zapLevel() int8 {
	if os.Getenv("TEST_VERBOSE") != "" {
		return -2
	}
	return 2 // errors only
}

// tbAdapter lets the suite's fixtures, which take a testing.TB, live for the whole TestMain.
type tbAdapter struct {
	testing.TB
	cleanups []func()
}

func (t *tbAdapter) Helper()                   {}
func (t *tbAdapter) Cleanup(f func())          { t.cleanups = append(t.cleanups, f) }
func (t *tbAdapter) Fatal(args ...any)         { panic(fmt.Sprint(args...)) }
func (t *tbAdapter) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (t *tbAdapter) Errorf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (t *tbAdapter) Logf(string, ...any)       {}
func (t *tbAdapter) TempDir() string {
	d, _ := os.MkdirTemp("", "suite-")
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
func (t *tbAdapter) Name() string { return "suite" }
func (t *tbAdapter) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}
