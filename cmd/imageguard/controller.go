package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/go-logr/logr"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/platform"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/signature"
	"github.com/imageguard/imageguard/internal/vap"
	"github.com/imageguard/imageguard/internal/vulndb"
	"github.com/imageguard/imageguard/internal/webhookcert"
	"github.com/imageguard/imageguard/internal/workload"
)

// controllerOptions are the flags of `imageguard controller`. Each flag is registered only once the
// feature behind it exists.
type controllerOptions struct {
	ScanConcurrency  int
	PodConcurrency   int
	ReconcileTimeout time.Duration
	ScanTimeout      time.Duration
	ReportMaxBytes   int
	ReportRetention  time.Duration
	RescanInterval   time.Duration
	RefreshInterval  time.Duration
	// SignatureRecheckInterval is --signature-recheck-interval.
	SignatureRecheckInterval time.Duration
	DBMaxAge                 time.Duration
	PolicyReports            string
	ExcludedNamespaces       []string
	KubeAPIQPS               float32
	KubeAPIBurst             int
	DB                       dbOptions
	// JavaDB are the Java DB's repositories and local folder.
	JavaDB             javaDBOptions
	Registry           registryOptions
	Limits             limitOptions
	MemoryLimitRatio   float64
	AnalysisMemory     int64
	LayerCacheMaxBytes int64
	CacheDir           string
	MetricsAddr        string
	MetricsSecure      bool
	EnableHTTP2        bool
	ProbeAddr          string
	ReceiverAddr       string
	RegistryScanQPS    float64
	LeaderElect        bool
	LeaderElectID      string
	LeaderElectNS      string
	Webhook            webhookOptions
	Zap                zap.Options
}

// webhookOptions configure admission: the webhook server and its certificates.
type webhookOptions struct {
	Port              int
	CertDir           string
	CertSecret        string
	CertNamespace     string
	CertHosts         []string
	Configurations    []string
	ClientCA          string
	ExemptNamespaces  []string
	DecisionBudget    time.Duration
	FailurePolicy     string
	ControllerUsers   []string
	ScanQueueCapacity int
	// NodePlatforms are those of nodes that may join (os/architecture).
	NodePlatforms []string
	// GenerateAdmissionPolicies keeps a generated ValidatingAdmissionPolicy per enforcing policy.
	GenerateAdmissionPolicies bool
}

func (o *webhookOptions) bindFlags(fs *pflag.FlagSet) {
	fs.IntVar(&o.Port, "webhook-port", 9443, "Port of the admission webhook server (the validating webhook at "+admission.ValidatePath+
		" and the ImagePolicyWebhook backend at "+admission.ImagePolicyPath+"); 0 turns admission off.")
	fs.StringVar(&o.CertDir, "webhook-cert-dir", "/var/run/imageguard/webhook-certs",
		"Folder holding the webhook server's tls.crt and tls.key; reloaded when they change.")
	fs.StringVar(&o.CertSecret, "webhook-cert-secret", "",
		"Keep the webhook's own CA and serving certificate in this Secret, renew them and inject the CA bundle; empty when cert-manager (or you) provide --webhook-cert-dir.")
	fs.StringVar(&o.CertNamespace, "webhook-cert-namespace", "", "Namespace of --webhook-cert-secret (default: the namespace in POD_NAMESPACE).")
	fs.StringSliceVar(&o.CertHosts, "webhook-cert-hosts", nil, "DNS names and IP addresses the self-managed serving certificate is valid for (comma list), e.g. the webhook Service's names.")
	fs.StringSliceVar(&o.Configurations, "webhook-configurations", nil, "ValidatingWebhookConfigurations whose caBundle the self-managed CA is injected into (comma list).")
	fs.StringVar(&o.ClientCA, "webhook-client-ca", "",
		"PEM file of the CA whose client certificates the webhook server requires (the API server's, configured in its AdmissionConfiguration); without it any caller that reaches the port is served: restrict it with a NetworkPolicy.")
	fs.StringSliceVar(&o.ExemptNamespaces, "admission-exempt-namespaces", nil,
		"Namespaces admission never checks (comma list); kube-system always. The validating webhook also skips namespaces labelled "+admission.OptOutLabel+"=disabled; the ImagePolicyWebhook backend does not.")
	fs.DurationVar(&o.DecisionBudget, "admission-decision-budget", 3*time.Second,
		"Time limit of one admission decision, tag lookups included; keep it well under the webhook's timeoutSeconds. An image whose digest is not known in time is unscanned: onUnscanned decides.")
	fs.StringVar(&o.FailurePolicy, "admission-failure-policy", string(admission.FailureIgnore),
		"What an internal error answers: Ignore admits with a Warning, Fail refuses. Set it to the webhook configuration's failurePolicy.")
	fs.StringSliceVar(&o.ControllerUsers, "admission-controller-users", admission.DefaultControllerUsers,
		"Users (comma list) whose pods, ReplicaSets and Jobs are admitted without a new judgement when their controlling owner (ReplicaSet, StatefulSet, DaemonSet, Job; Deployment; CronJob) runs the same images: the owner was judged when it was created or changed.")
	fs.StringSliceVar(&o.NodePlatforms, "admission-node-platforms", nil,
		"Platforms (os/architecture, comma list) of nodes that may join the cluster, an autoscaler's say: admission asks for a scanned report of an image index on each, as on the platform of every node it sees a pod may land on.")
	fs.BoolVar(&o.GenerateAdmissionPolicies, "generate-admission-policies", true,
		"Keep, for each ImagePolicy and ClusterImagePolicy that enforces or warns, a generated ValidatingAdmissionPolicy and binding with its registries and tags rules, which Kubernetes evaluates itself: they hold while ImageGuard is unreachable. False removes those generated before.")
	fs.IntVar(&o.ScanQueueCapacity, "admission-scan-queue", 1024, "Images seen unscanned at admission whose reports wait to be created; beyond it the pod controller creates them when a pod runs.")
}

// javaDBOptions are the Java DB flags.
type javaDBOptions struct {
	Repositories []string
	Path         string
}

func (o *javaDBOptions) bindFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&o.Repositories, "java-db-repository", vulndb.JavaDB.DefaultRepositories,
		"OCI repositories of Trivy's Java DB artifact (about 1 GB unpacked), tried in order (comma list); downloaded when the first image with Java archives is analysed, then kept current as the vulnerability DB is.")
	fs.StringVar(&o.Path, "java-db-path", "",
		"Folder holding a Trivy Java DB (trivy-java.db and metadata.json) to use as it is, never downloading: for air-gapped clusters.")
}

func (o *controllerOptions) bindFlags(fs *pflag.FlagSet) {
	o.DB.bindFlags(fs)
	o.JavaDB.bindFlags(fs)
	fs.DurationVar(&o.DB.CheckInterval, "db-check-interval", time.Hour,
		"How often the DB repositories are checked for a new DB (one manifest request when unchanged).")
	fs.DurationVar(&o.DB.CheckTimeout, "db-check-timeout", vulndb.DefaultCheckTimeout,
		"Time limit of one check for a new DB, its download included; the current DB keeps serving when it passes.")
	o.Registry.bindFlags(fs)
	o.Limits.bindFlags(fs)
	fs.Int64Var(&o.AnalysisMemory, "analysis-memory-bytes", 512<<20,
		"Resident memory of the worker process each analysis runs in; past it the worker is stopped and the image is UnsupportedImage. -1 analyses in the controller's own process.")
	fs.Int64Var(&o.LayerCacheMaxBytes, "layer-cache-max-bytes", 1<<30,
		"Bytes of the layer cache under --cache-dir: Trivy's analysis of each image layer, kept so that an image whose layers were analysed before pulls only its config and its new layers; least recently used entries are evicted past it. 0 keeps no layer cache.")
	fs.Float64Var(&o.MemoryLimitRatio, "memory-limit-ratio", 0.9,
		"Fraction of the container's memory limit, read from its cgroup, less what the analysis workers may take (--scan-concurrency x --analysis-memory-bytes), set as the Go runtime's soft memory limit (GOMEMLIMIT, when set, wins); 0 leaves it alone.")
	fs.IntVar(&o.ScanConcurrency, "scan-concurrency", 2, "Reports scanned at once, and image analyses running at once.")
	fs.IntVar(&o.PodConcurrency, "pod-concurrency", controllers.DefaultPodConcurrency,
		"Namespaces whose pods are reconciled at once (their tags looked up, their reports created), so that one slow registry never holds the rest.")
	fs.DurationVar(&o.ReconcileTimeout, "reconcile-timeout", controllers.DefaultReconcileTimeout,
		"Time limit of one reconcile; a report's reconcile has --scan-timeout more.")
	fs.DurationVar(&o.ScanTimeout, "scan-timeout", 10*time.Minute, "Time limit of one image analysis, from the first registry request to the kept inventory.")
	fs.IntVar(&o.ReportMaxBytes, "report-max-bytes", 512<<10, "Largest encoded size of an ImageScanReport; the vulnerability list is cut, highest severity kept, to fit.")
	fs.DurationVar(&o.ReportRetention, "report-retention", time.Hour, "How long a report no pod uses any more is kept; 0 deletes it at once.")
	fs.DurationVar(&o.RescanInterval, "rescan-interval", 24*time.Hour, "How often every report is checked again without any event (with jitter), so none stays stale if an event is missed.")
	fs.DurationVar(&o.RefreshInterval, "report-refresh-interval", controllers.DefaultReportRefreshInterval,
		"How often at most a report whose findings a new DB left unchanged is written to bring its status.vulnerabilityDB and lastScanTime up to date (writes at rest: at most one per report per interval).")
	fs.DurationVar(&o.SignatureRecheckInterval, "signature-recheck-interval", signature.DefaultRecheckInterval,
		"How long a signature verdict stands before an image's signatures are read and verified again (a policy change re-checks at once; a failing registry or trust root is retried after a minute).")
	fs.DurationVar(&o.DBMaxAge, "db-max-age", controllers.DefaultDBMaxAge,
		"How old the vulnerability DB in use may be (from its build time) before it is Stale: every maxScanAge rule then fails with reason DatabaseStale.")
	fs.StringVar(&o.PolicyReports, "policy-reports", string(controllers.FormatWGPolicy),
		"Policy report kinds written, each while its CRD is installed (comma list): wgpolicyk8s (wgpolicyk8s.io/v1alpha2 PolicyReport), openreports (openreports.io/v1alpha1 Report), or none.")
	fs.Float32Var(&o.KubeAPIQPS, "kube-api-qps", 50, "Requests per second to the API server; a DB update's report patches are spread under it.")
	fs.IntVar(&o.KubeAPIBurst, "kube-api-burst", 100, "Burst of requests to the API server.")
	fs.StringSliceVar(&o.ExcludedNamespaces, "exclude-namespaces", nil, "Namespaces never reported on (comma list); a namespace labelled imageguard.dev/exclude=true is excluded too.")
	fs.StringVar(&o.CacheDir, "cache-dir", "/var/cache/imageguard",
		"Folder for the downloaded vulnerability DB and the kept image inventories; mount a volume here so a restart pulls nothing again.")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8443",
		"Address the Prometheus metrics endpoint binds to; 0 disables it.")
	fs.BoolVar(&o.MetricsSecure, "metrics-secure", true,
		"Serve metrics over HTTPS to callers the API server authenticates and authorizes (get on the /metrics non-resource URL); false serves plain HTTP to anyone.")
	fs.BoolVar(&o.EnableHTTP2, "enable-http2", false,
		"Serve HTTP/2 on the webhook and metrics servers; off by default against HTTP/2 stream attacks (rapid reset).")
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", ":8081",
		"Address the /healthz and /readyz probes bind to.")
	fs.StringVar(&o.ReceiverAddr, "receiver-bind-address", ":9292",
		"Address the registry push notification receiver (/hooks/registry/<namespace>/<name>) binds to; 0 disables it.")
	fs.Float64Var(&o.RegistryScanQPS, "registry-scan-qps", 10,
		"Requests per second a RegistryScan's listing (pages, tag lookups) sends to each registry.")
	fs.BoolVar(&o.LeaderElect, "leader-elect", false,
		"Elect a leader among replicas so that one does the work; turn on when running more than one replica.")
	fs.StringVar(&o.LeaderElectID, "leader-election-id", "imageguard.security.imageguard.dev",
		"Name of the Lease used for leader election.")
	fs.StringVar(&o.LeaderElectNS, "leader-election-namespace", "",
		"Namespace of the leader election Lease; defaults to the namespace the controller runs in.")
	o.Webhook.bindFlags(fs)
	// --kubeconfig (read by ctrl.GetConfig) and the zap logging flags are Go flags.
	goFlags := flag.NewFlagSet("", flag.ContinueOnError)
	config.RegisterFlags(goFlags)
	o.Zap.BindFlags(goFlags)
	fs.AddGoFlagSet(goFlags)
}

// parseControllerFlags parses args into options; it reports flag.ErrHelp for --help.
func parseControllerFlags(args []string, output io.Writer) (*controllerOptions, error) {
	opts := &controllerOptions{Zap: zap.Options{Development: false}}
	fs := pflag.NewFlagSet("imageguard controller", pflag.ContinueOnError)
	fs.SetOutput(output)
	fs.SortFlags = false
	opts.bindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if p := admission.FailurePolicy(opts.Webhook.FailurePolicy); p != admission.FailureIgnore && p != admission.FailureFail {
		return nil, fmt.Errorf("--admission-failure-policy must be %s or %s, not %q", admission.FailureIgnore, admission.FailureFail, p)
	}
	if opts.AnalysisMemory == 0 {
		opts.AnalysisMemory = 512 << 20
	}
	if opts.MemoryLimitRatio < 0 || opts.MemoryLimitRatio > 1 {
		return nil, errors.New("--memory-limit-ratio must be between 0 and 1")
	}
	if _, err := controllers.ParseReportFormats(opts.PolicyReports); err != nil {
		return nil, fmt.Errorf("--policy-reports: %w", err)
	}
	if opts.RefreshInterval <= 0 || opts.DBMaxAge <= 0 || opts.SignatureRecheckInterval <= 0 {
		return nil, errors.New("--report-refresh-interval, --db-max-age and --signature-recheck-interval must be positive")
	}
	if opts.LayerCacheMaxBytes < 0 {
		return nil, errors.New("--layer-cache-max-bytes must not be negative (0 keeps no layer cache)")
	}
	if opts.RegistryScanQPS <= 0 {
		return nil, errors.New("--registry-scan-qps must be positive")
	}
	if opts.Webhook.DecisionBudget <= 0 {
		return nil, errors.New("--admission-decision-budget must be positive")
	}
	if w := &opts.Webhook; w.CertSecret != "" {
		if w.CertNamespace == "" {
			w.CertNamespace = os.Getenv("POD_NAMESPACE")
		}
		if w.CertNamespace == "" || len(w.CertHosts) == 0 {
			return nil, errors.New("--webhook-cert-secret needs --webhook-cert-hosts and a namespace (--webhook-cert-namespace or POD_NAMESPACE)")
		}
	}
	return opts, nil
}

// setUpControllers adds the DB manager, the scanner and the reconcilers to mgr.
func setUpControllers(mgr ctrl.Manager, opts *controllerOptions) error {
	reg := opts.Registry.client()
	db, err := vulndb.New(vulndb.Options{
		Repositories:  opts.DB.Repositories,
		CheckInterval: opts.DB.CheckInterval,
		CheckTimeout:  opts.DB.CheckTimeout,
		LocalPath:     opts.DB.Path,
		CacheDir:      opts.CacheDir,
		Registry:      reg,
		MaxBytes:      opts.Limits.DBBytes,
		Log:           ctrl.Log.WithName("vulndb"),
	})
	if err != nil {
		return err
	}
	if err := mgr.Add(db); err != nil {
		return err
	}
	// The Java DB: the same manager, on demand (a cluster without Java images never downloads it).
	javaDB, err := vulndb.New(vulndb.Options{
		Artifact: vulndb.JavaDB, OnDemand: true,
		Repositories:  opts.JavaDB.Repositories,
		CheckInterval: opts.DB.CheckInterval,
		CheckTimeout:  opts.DB.CheckTimeout,
		LocalPath:     opts.JavaDB.Path,
		CacheDir:      opts.CacheDir,
		Registry:      reg,
		MaxBytes:      opts.Limits.DBBytes,
		Log:           ctrl.Log.WithName("javadb"),
	})
	if err != nil {
		return err
	}
	if err := mgr.Add(javaDB); err != nil {
		return err
	}
	worker, err := analysisWorker(opts)
	if err != nil {
		return err
	}
	s, err := scanner.New(scanner.Options{Worker: worker,
		CacheDir: opts.CacheDir, Timeout: opts.ScanTimeout, Limits: opts.Limits.Image, CrashRetryAfter: opts.RescanInterval,
		Concurrency: opts.ScanConcurrency, LayerCacheMaxBytes: opts.LayerCacheMaxBytes, JavaDB: javaDB,
	}, reg, db)
	if err != nil {
		return err
	}
	// On an orderly shutdown the analyses it interrupts are not counted as crashes.
	if err := mgr.Add(stopOnShutdown(s.Stop)); err != nil {
		return err
	}
	var admissionOpts *controllers.AdmissionOptions
	if opts.Webhook.Port != 0 {
		nodePlatforms, err := parseNodePlatforms(opts.Webhook.NodePlatforms)
		if err != nil {
			return err
		}
		admissionOpts = &controllers.AdmissionOptions{
			Registry: reg, ExemptNamespaces: opts.Webhook.ExemptNamespaces, ExcludedNamespaces: opts.ExcludedNamespaces,
			Budget: opts.Webhook.DecisionBudget, FailurePolicy: admission.FailurePolicy(opts.Webhook.FailurePolicy),
			ControllerUsers: opts.Webhook.ControllerUsers, ScanQueueCapacity: opts.Webhook.ScanQueueCapacity,
			NodePlatforms: nodePlatforms,
		}
	}
	var admissionPolicies *vap.Options
	if opts.Webhook.GenerateAdmissionPolicies {
		exempt := opts.Webhook.ExemptNamespaces
		// ImageGuard's own namespace always: a generated policy must never stop ImageGuard from
		// starting again, for then nothing would ever update or remove it.
		if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
			exempt = append(slices.Clone(exempt), ns)
		}
		admissionPolicies = &vap.Options{ExemptNamespaces: exempt, OptOutLabel: admission.OptOutLabel,
			ControllerUsers: opts.Webhook.ControllerUsers}
	}
	formats, err := controllers.ParseReportFormats(opts.PolicyReports)
	if err != nil {
		return err
	}
	return controllers.Setup(mgr, controllers.Options{
		AdmissionPolicies: admissionPolicies, PolicyReports: formats,
		ReportRefreshInterval: opts.RefreshInterval, DBMaxAge: opts.DBMaxAge,
		SignatureRecheckInterval: opts.SignatureRecheckInterval, Namespace: os.Getenv("POD_NAMESPACE"),
		Registry: reg, Scanner: s, DB: db, JavaDB: javaDB,
		ScanConcurrency: opts.ScanConcurrency, ReportMaxBytes: opts.ReportMaxBytes,
		PodConcurrency: opts.PodConcurrency, ReconcileTimeout: opts.ReconcileTimeout, ScanTimeout: opts.ScanTimeout,
		ReportRetention: opts.ReportRetention, RescanInterval: opts.RescanInterval,
		ExcludedNamespaces: opts.ExcludedNamespaces, Admission: admissionOpts,
		ReceiverAddress: receiverAddress(opts.ReceiverAddr), RegistryScanRequestsPerSecond: opts.RegistryScanQPS,
	})
}

// receiverAddress is the receiver's address, "" when disabled.
func receiverAddress(flag string) string {
	if flag == "0" {
		return ""
	}
	return flag
}

// workersReserve is the memory the analysis workers may take at once.
func workersReserve(opts *controllerOptions) uint64 {
	if opts.AnalysisMemory <= 0 {
		return 0
	}
	return uint64(max(opts.ScanConcurrency, 1)) * uint64(opts.AnalysisMemory)
}

// analysisWorker returns how analyses run: in a worker process of this binary, unless
// --analysis-memory-bytes is negative.
func analysisWorker(opts *controllerOptions) (*scanner.WorkerOptions, error) {
	if opts.AnalysisMemory < 0 {
		return nil, nil
	}
	// /proc/self/exe is this very binary even when an upgrade replaced the file on disk, so a
	// worker runs the same Trivy; elsewhere, the path it was started from.
	self := "/proc/self/exe"
	if _, err := os.Stat(self); err != nil {
		if self, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("finding this binary to run analysis workers: %w", err)
		}
	}
	return &scanner.WorkerOptions{Command: []string{self, "analyze-worker"}, MemoryBytes: opts.AnalysisMemory}, nil
}

// stopOnShutdown is a Runnable, on every replica, that calls stop when the manager stops.
type stopOnShutdown func()

func (f stopOnShutdown) Start(ctx context.Context) error {
	<-ctx.Done()
	f()
	return nil
}

func (stopOnShutdown) NeedLeaderElection() bool { return false }

// webhookCertificates returns the keeper of self-managed webhook certificates; nil when they come
// from elsewhere (cert-manager, or files you mount).
func webhookCertificates(restConfig *rest.Config, opts *controllerOptions) (*webhookcert.Keeper, error) {
	w := opts.Webhook
	if w.Port == 0 || w.CertSecret == "" {
		return nil, nil
	}
	// An uncached client: the manager's would list and watch every Secret of the cluster.
	c, err := client.New(restConfig, client.Options{Scheme: scheme.New()})
	if err != nil {
		return nil, err
	}
	return webhookcert.New(webhookcert.Options{
		Client: c, Log: ctrl.Log.WithName("webhook-certificates"),
		Namespace: w.CertNamespace, SecretName: w.CertSecret, Hosts: w.CertHosts,
		CertDir: w.CertDir, WebhookConfigurations: w.Configurations,
	})
}

// setMemoryLimit sets the Go runtime's soft memory limit to ratio of the cgroup's, so the
// collector works harder near the limit instead of the kernel killing the process.
func setMemoryLimit(log logr.Logger, ratio float64, reserve uint64) {
	if ratio == 0 {
		return
	}
	// The workers share the container's cgroup: what they may take is not the controller's.
	provider := func() (uint64, error) {
		limit, err := memlimit.FromCgroup()
		if err != nil {
			return 0, err
		}
		if limit <= reserve+64<<20 {
			return 64 << 20, nil
		}
		return limit - reserve, nil
	}
	limit, err := memlimit.Set(memlimit.WithRatio(ratio), memlimit.WithProvider(provider),
		memlimit.WithLogger(slog.New(logr.ToSlogHandler(log.WithName("memlimit")))))
	if err != nil {
		log.Info("No cgroup memory limit found; the Go runtime's soft memory limit is left as it is", "reason", err.Error())
		return
	}
	if limit != math.MaxInt64 {
		log.Info("Set the Go runtime's soft memory limit from the cgroup's", "bytes", limit, "ratio", ratio)
	}
}

// The metrics endpoint asks the API server who calls and whether they may get /metrics.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

func runController(args []string, stderr io.Writer) int {
	opts, err := parseControllerFlags(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "imageguard controller: %v\n", err)
		return 2
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts.Zap)))
	log := ctrl.Log.WithName("setup")
	setMemoryLimit(log, opts.MemoryLimitRatio, workersReserve(opts))

	restConfig, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "Cannot load a kubeconfig")
		return 1
	}
	restConfig.QPS, restConfig.Burst = opts.KubeAPIQPS, opts.KubeAPIBurst
	var tlsOpts []func(*tls.Config)
	if !opts.EnableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	webhookTLS := tlsOpts
	if opts.Webhook.ClientCA != "" {
		requireClientCert, err := webhookcert.RequireClientCert(opts.Webhook.ClientCA)
		if err != nil {
			log.Error(err, "Cannot load --webhook-client-ca")
			return 1
		}
		webhookTLS = append(slices.Clip(tlsOpts), requireClientCert)
	}
	metricsOpts := metricsserver.Options{BindAddress: opts.MetricsAddr, SecureServing: opts.MetricsSecure, TLSOpts: tlsOpts}
	if opts.MetricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                  scheme.New(),
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  opts.ProbeAddr,
		LeaderElection:          opts.LeaderElect,
		LeaderElectionID:        opts.LeaderElectID,
		LeaderElectionNamespace: opts.LeaderElectNS,
		// Stepping down at once on shutdown lets a new leader start without waiting for the lease.
		LeaderElectionReleaseOnCancel: true,
		Cache:                         controllers.CacheOptions(),
		WebhookServer:                 webhook.NewServer(webhook.Options{Port: opts.Webhook.Port, CertDir: opts.Webhook.CertDir, TLSOpts: webhookTLS}),
	})
	if err != nil {
		log.Error(err, "Cannot create the manager")
		return 1
	}
	certs, err := webhookCertificates(restConfig, opts)
	if err != nil {
		log.Error(err, "Cannot set up the webhook certificates")
		return 1
	}
	if certs == nil && opts.Webhook.Port != 0 {
		if _, err := os.Stat(filepath.Join(opts.Webhook.CertDir, "tls.crt")); err != nil {
			log.Error(err, "The webhook server has no certificate: mount one in --webhook-cert-dir, let ImageGuard keep its own with --webhook-cert-secret, or turn admission off with --webhook-port=0")
			return 1
		}
	}
	if certs != nil {
		// The webhook server reads its certificate when it starts: have one before.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := certs.Ensure(ctx)
		cancel()
		if err != nil {
			log.Error(err, "Cannot provide the webhook certificates")
			return 1
		}
		if err := mgr.Add(certs); err != nil {
			log.Error(err, "Cannot add the webhook certificate keeper")
			return 1
		}
	}
	if err := setUpControllers(mgr, opts); err != nil {
		log.Error(err, "Cannot set up the controllers")
		return 1
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "Cannot add the health check")
		return 1
	}
	ready := healthz.Ping
	if opts.Webhook.Port != 0 {
		// Ready once the webhook server answers, so the Service sends no request before.
		ready = mgr.GetWebhookServer().StartedChecker()
	}
	if err := mgr.AddReadyzCheck("readyz", ready); err != nil {
		log.Error(err, "Cannot add the readiness check")
		return 1
	}

	log.Info("Starting the manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "The manager stopped with an error")
		return 1
	}
	return 0
}

// parseNodePlatforms checks --admission-node-platforms and returns them as
// workload.NodePlatform gives a node's.
func parseNodePlatforms(in []string) ([]string, error) {
	var out []string
	for _, p := range in {
		osName, arch, ok := strings.Cut(strings.TrimSpace(p), "/")
		node := workload.NodePlatform(osName, arch)
		if !ok || strings.Contains(arch, "/") || (node == "" && strings.TrimSpace(p) != platform.Default) {
			return nil, fmt.Errorf("--admission-node-platforms: %q is not os/architecture, e.g. linux/arm64", p)
		}
		if !slices.Contains(out, node) {
			out = append(out, node)
		}
	}
	return out, nil
}
