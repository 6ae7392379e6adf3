// Package testsuite starts the whole of ImageGuard for a test package: a real control plane
// (optionally with kube-controller-manager), two real registries (one behind basic auth), a real
// DB published to the first, the scanner, and the manager with every reconciler and the admission
// webhook, which the API server calls with a client certificate the webhook requires.
package testsuite

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap/zapcore"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
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
	"github.com/imageguard/imageguard/internal/webhookcert"
)

// Image builds an Alpine image with the base vulnerable packages (libcrypto3 of openssl, busybox),
// extra packages, and a file that makes its digest unique to id.
func Image(id string, extra ...testutil.APKPackage) v1.Image {
	return ImageOf(id, append([]testutil.APKPackage{
		{Name: "libcrypto3", Version: "3.5.1-r0", Origin: "openssl"},
		{Name: "busybox", Version: "1.37.0-r18"},
	}, extra...)...)
}

// ImageOf builds an Alpine image with pkgs only, and a file that makes its digest unique to id.
func ImageOf(id string, pkgs ...testutil.APKPackage) v1.Image {
	base, err := testutil.AlpineImage("3.22.1", pkgs)
	if err != nil {
		panic(err)
	}
	layers, err := base.Layers()
	if err != nil {
		panic(err)
	}
	marker, err := testutil.LayerFromFiles(map[string][]byte{"etc/test-id": []byte(id)})
	if err != nil {
		panic(err)
	}
	img, err := testutil.ImageFromLayers(testutil.LinuxAMD64, append(layers, marker)...)
	if err != nil {
		panic(err)
	}
	return img
}

// Push uploads img to r as repo:1.0 and returns the pod's image reference, the kubelet's image ID
// and the digest.
func Push(t testing.TB, r *testutil.Registry, repo string, img v1.Image) (ref, imageID, digest string) {
	ref, d := r.Push(t, repo, "1.0", img)
	return ref, r.Host() + "/" + repo + "@" + d.String(), d.String()
}

// DBRepository is where the suite publishes the DB, in Registry.
const DBRepository = "aquasecurity/trivy-db"

// JavaDBRepository is where the suite's Java DB manager looks for the Java DB (tag 1), in
// Registry; the tests that need one publish it.
const JavaDBRepository = "aquasecurity/trivy-java-db"

// Options shape a suite.
type Options struct {
	// ControllerManager also runs kube-controller-manager.
	ControllerManager bool
	// AdmissionLabel: the webhook judges only namespaces labelled <AdmissionLabel>=true, so that
	// the other tests of the package are not judged.
	AdmissionLabel string
	// IgnoreWebhookFailures registers the webhooks with failurePolicy Ignore, the chart's default
	// (the markers say Fail): the API server then admits what ImageGuard does not answer in time.
	IgnoreWebhookFailures bool
	// DB is the DB published at start.
	DB *testutil.DBSpec
	// Controllers are the reconcilers' options; the registry, scanner, DB and admission's
	// registry are filled in.
	Controllers controllers.Options
	// Clock, when set, is the time of the DB manager, the scanner and the reconcilers (a test
	// moves it).
	Clock clock.PassiveClock
	// LayerCacheMaxBytes bounds the scanner's layer cache: 0 is the controller's default (1 GiB),
	// a negative value keeps none.
	LayerCacheMaxBytes int64
}

// DefaultLayerCacheMaxBytes is the controller's --layer-cache-max-bytes default.
const DefaultLayerCacheMaxBytes = 1 << 30

// Suite is a running ImageGuard.
type Suite struct {
	Env      *testenv.Env
	Registry *testutil.Registry
	// Private requires the user "puller" with the password "s3cret".
	Private *testutil.Registry
	DB      *vulndb.Manager
	// JavaDB is fetched on demand from JavaDBRepository, where the suite publishes none.
	JavaDB   *vulndb.Manager
	Scanner  *scanner.Scanner
	CacheDir string
	// TB serves the fixtures that outlive a test.
	TB *TB
	// ClientCerts are what the API server presents to the webhook, which requires them.
	ClientCerts testutil.ClientCerts

	opts     Options
	client   *registry.Client
	restarts int
	cancel   context.CancelFunc
	done     chan error
}

// Start starts a suite; Stop ends it.
func Start(opts Options) (*Suite, error) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.Level(zapLevel()))))
	s := &Suite{TB: &TB{}, opts: opts}
	dir := s.TB.TempDir()
	s.CacheDir = filepath.Join(dir, "cache")
	var err error
	s.ClientCerts, err = testutil.NewClientCerts(dir, "kube-apiserver")
	if err != nil {
		return nil, err
	}
	admissionConfig, err := webhookClientAuth(dir, s.ClientCerts)
	if err != nil {
		return nil, err
	}
	webhooks, err := testenv.ValidatingWebhooks(opts.AdmissionLabel)
	if err != nil {
		return nil, fmt.Errorf("reading the webhook configuration: %w", err)
	}
	if opts.IgnoreWebhookFailures {
		for _, cfg := range webhooks {
			for i := range cfg.Webhooks {
				cfg.Webhooks[i].FailurePolicy = ptr.To(admissionregistrationv1.Ignore)
			}
		}
	}
	s.Env, err = testenv.Start(testenv.Options{
		PolicyReportCRDs: true, ValidatingWebhooks: webhooks, ControllerManager: opts.ControllerManager,
		APIServerArgs: map[string]string{"admission-control-config-file": admissionConfig},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot start the control plane: %w", err)
	}
	s.Registry = testutil.NewRegistry(s.TB)
	s.Private = testutil.NewRegistry(s.TB, testutil.WithBasicAuth("puller", "s3cret"))
	s.Registry.PublishDB(s.TB, DBRepository, "2", opts.DB)
	s.client = registry.NewClient(registry.Options{InsecureHosts: []string{s.Registry.Host(), s.Private.Host()}})
	if err := s.startImageGuard(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Restart stops ImageGuard and starts it anew (a new scanner, DB manager and manager, nothing
// kept in memory), with an empty cache folder when emptyCache: what a pod restarted without a
// volume starts with.
func (s *Suite) Restart(emptyCache bool) error {
	s.stopImageGuard()
	if emptyCache {
		if err := os.RemoveAll(s.CacheDir); err != nil {
			return err
		}
	}
	s.restarts++
	return s.startImageGuard()
}

func (s *Suite) startImageGuard() error {
	opts, client := s.opts, s.client
	if err := os.MkdirAll(s.CacheDir, 0o700); err != nil {
		return err
	}
	var err error
	s.DB, err = vulndb.New(vulndb.Options{
		Repositories: []string{s.Registry.Host() + "/" + DBRepository + ":2"}, CacheDir: filepath.Join(s.CacheDir, "db"),
		CheckInterval: time.Hour, Registry: client, Log: logr.Discard(), Clock: opts.Clock,
	})
	if err != nil {
		return err
	}
	s.JavaDB, err = vulndb.New(vulndb.Options{
		Artifact: vulndb.JavaDB, OnDemand: true, WantRetry: time.Second,
		Repositories: []string{s.Registry.Host() + "/" + JavaDBRepository + ":1"}, CacheDir: filepath.Join(s.CacheDir, "db"),
		CheckInterval: time.Hour, Registry: client, Log: logr.Discard(), Clock: opts.Clock,
	})
	if err != nil {
		return err
	}
	layerCache := opts.LayerCacheMaxBytes
	switch {
	case layerCache == 0:
		layerCache = DefaultLayerCacheMaxBytes
	case layerCache < 0:
		layerCache = 0
	}
	s.Scanner, err = scanner.New(scanner.Options{CacheDir: s.CacheDir, Timeout: time.Minute, Clock: opts.Clock, LayerCacheMaxBytes: layerCache, JavaDB: s.JavaDB}, client, s.DB)
	if err != nil {
		return err
	}
	// The controller's own defaults (cmd/imageguard: --kube-api-qps, --kube-api-burst).
	mgrConfig := rest.CopyConfig(s.Env.Config)
	mgrConfig.QPS, mgrConfig.Burst = 50, 100
	serving := s.Env.Environment.WebhookInstallOptions
	requireClientCert, err := webhookcert.RequireClientCert(s.ClientCerts.CAFile)
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(mgrConfig, ctrl.Options{
		Scheme:  scheme.New(),
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   controllers.CacheOptions(),
		// Controller names are unique per process: a restarted manager takes them again.
		Controller: config.Controller{SkipNameValidation: ptr.To(s.restarts > 0)},
		WebhookServer: webhook.NewServer(webhook.Options{
			Host: serving.LocalServingHost, Port: serving.LocalServingPort, CertDir: serving.LocalServingCertDir,
			TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }, requireClientCert},
		}),
	})
	if err != nil {
		return err
	}
	if err := mgr.Add(s.DB); err != nil {
		return err
	}
	if err := mgr.Add(s.JavaDB); err != nil {
		return err
	}
	o := opts.Controllers
	o.Registry, o.Scanner, o.DB, o.JavaDB, o.ScanTimeout = client, s.Scanner, s.DB, s.JavaDB, time.Minute
	if opts.Clock != nil {
		o.Clock = opts.Clock
	}
	if o.Admission != nil {
		a := *o.Admission
		a.Registry = client
		o.Admission = &a
	}
	if err := controllers.Setup(mgr, o); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	go func() { s.done <- mgr.Start(ctx) }()
	// The DB manager downloads the DB at start: wait for it, so that its registry requests are
	// not counted by the first test.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, ok := s.DB.Info(); ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the vulnerability DB was not loaded: %v", s.DB.LastError())
		}
	}
}

func (s *Suite) stopImageGuard() {
	if s.cancel != nil {
		s.cancel()
		if err := <-s.done; err != nil {
			fmt.Fprintf(os.Stderr, "manager: %v\n", err)
		}
		s.cancel = nil
	}
	if s.DB != nil {
		_ = s.DB.Close()
	}
}

// Stop stops the manager, the registries and the control plane.
func (s *Suite) Stop() {
	s.stopImageGuard()
	if s.Env != nil {
		_ = s.Env.Stop()
	}
	s.TB.cleanup()
}

// FreeAddress returns a loopback address with a port free now, for a server of the suite.
func FreeAddress() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// WebhookURL is the URL of path on the manager's webhook server.
func (s *Suite) WebhookURL(path string) string {
	o := s.Env.Environment.WebhookInstallOptions
	return fmt.Sprintf("https://%s:%d%s", o.LocalServingHost, o.LocalServingPort, path)
}

// WebhookClient calls the webhook server as the API server does: trusting its CA, presenting
// the client certificate (none when anonymous).
func (s *Suite) WebhookClient(anonymous bool) (*http.Client, error) {
	ca, err := os.ReadFile(filepath.Join(s.Env.Environment.WebhookInstallOptions.LocalServingCertDir, "tls.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	config := &tls.Config{RootCAs: pool}
	if !anonymous {
		config.Certificates = []tls.Certificate{s.ClientCerts.Certificate}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: config, MaxIdleConnsPerHost: 64}}, nil
}

// webhookClientAuth writes the AdmissionConfiguration that makes the API server present certs to
// every admission webhook, and returns its path.
func webhookClientAuth(dir string, certs testutil.ClientCerts) (string, error) {
	kubeconfig := filepath.Join(dir, "webhook-client.kubeconfig")
	err := os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
users:
- name: '*'
  user:
    client-certificate: %s
    client-key: %s
`, certs.CertFile, certs.KeyFile), 0o600)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "admission-config.yaml")
	return path, os.WriteFile(path, fmt.Appendf(nil, `apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: %s
`, kubeconfig), 0o600)
}

func zapLevel() int8 {
	if os.Getenv("TEST_VERBOSE") != "" {
		return -2
	}
	return 2 // errors only
}

// TB lets a suite's fixtures, which take a testing.TB, live for the whole TestMain.
type TB struct {
	testing.TB
	cleanups []func()
}

// Helper implements testing.TB.
func (t *TB) Helper() {}

// Cleanup implements testing.TB: f runs when the suite stops.
func (t *TB) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }

// Fatal implements testing.TB.
func (t *TB) Fatal(args ...any) { panic(fmt.Sprint(args...)) }

// Fatalf implements testing.TB.
func (t *TB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }

// Errorf implements testing.TB.
func (t *TB) Errorf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }

// Logf implements testing.TB.
func (t *TB) Logf(string, ...any) {}

// TempDir implements testing.TB.
func (t *TB) TempDir() string {
	d, _ := os.MkdirTemp("", "suite-")
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// Name implements testing.TB.
func (t *TB) Name() string { return "suite" }

func (t *TB) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// PostReview posts an encoded AdmissionReview to url with c and returns the review it answers,
// which must be HTTP 200 and hold a response.
func PostReview(c *http.Client, url string, body []byte) (*admissionv1.AdmissionReview, error) {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	out := &admissionv1.AdmissionReview{}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return nil, err
	}
	if out.Response == nil {
		return nil, errors.New("no response")
	}
	return out, nil
}

// APIWrites reads the API server's count of write requests (create, patch, update, delete) on
// resource since it started, and how many of them were refused as conflicts (409).
func APIWrites(cfg *rest.Config, resource string) (total, conflicts float64, err error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return 0, 0, err
	}
	raw, err := dc.RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `resource="`+resource+`"`) {
			continue
		}
		if !strings.Contains(line, `verb="POST"`) && !strings.Contains(line, `verb="PATCH"`) &&
			!strings.Contains(line, `verb="PUT"`) && !strings.Contains(line, `verb="DELETE"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
		if err == nil {
			total += v
			if strings.Contains(line, `code="409"`) {
				conflicts += v
			}
		}
	}
	return total, conflicts, nil
}

// JavaImage builds a Debian 12 image holding Debian's log4j2 jars (log4j-core and log4j-api
// 2.19.0, as installed by liblog4j2-java) and a file that makes its digest unique to id.
func JavaImage(id string) (v1.Image, error) {
	pkg, err := testutil.DebianFiles(context.Background(), "liblog4j2-java")
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{"etc/test-id": []byte(id)}
	for _, name := range []string{"usr/share/java/log4j-core.jar", "usr/share/java/log4j-api.jar"} {
		data, ok := pkg.Files[name]
		if !ok {
			return nil, fmt.Errorf("liblog4j2-java %s has no %s", pkg.Version, name)
		}
		files[name] = data
	}
	base, err := testutil.DebianImage("12.11", []testutil.DebPackage{{Name: "libssl3", Version: "3.0.15-1~deb12u1", Source: "openssl"}})
	if err != nil {
		return nil, err
	}
	layers, err := base.Layers()
	if err != nil {
		return nil, err
	}
	app, err := testutil.LayerFromFiles(files)
	if err != nil {
		return nil, err
	}
	return testutil.ImageFromLayers(testutil.LinuxAMD64, append(layers, app)...)
}
