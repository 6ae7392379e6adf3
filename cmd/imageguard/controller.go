package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/vulndb"
)

// controllerOptions are the flags of `imageguard controller`. Each flag is registered only once the
// feature behind it exists.
type controllerOptions struct {
	DB            dbOptions
	Registry      registryOptions
	CacheDir      string
	MetricsAddr   string
	ProbeAddr     string
	LeaderElect   bool
	LeaderElectID string
	LeaderElectNS string
	Zap           zap.Options
}

func (o *controllerOptions) bindFlags(fs *pflag.FlagSet) {
	o.DB.bindFlags(fs)
	fs.DurationVar(&o.DB.CheckInterval, "db-check-interval", time.Hour,
		"How often the DB repositories are checked for a new DB (one manifest request when unchanged).")
	o.Registry.bindFlags(fs)
	fs.StringVar(&o.CacheDir, "cache-dir", "/var/cache/imageguard",
		"Folder for the downloaded vulnerability DB and the kept image inventories; mount a volume here so a restart pulls nothing again.")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8080",
		"Address the Prometheus metrics endpoint binds to; 0 disables it.")
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", ":8081",
		"Address the /healthz and /readyz probes bind to.")
	fs.BoolVar(&o.LeaderElect, "leader-elect", false,
		"Elect a leader among replicas so that one does the work; turn on when running more than one replica.")
	fs.StringVar(&o.LeaderElectID, "leader-election-id", "imageguard.security.imageguard.dev",
		"Name of the Lease used for leader election.")
	fs.StringVar(&o.LeaderElectNS, "leader-election-namespace", "",
		"Namespace of the leader election Lease; defaults to the namespace the controller runs in.")
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
	return opts, nil
}

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

	restConfig, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "Cannot load a kubeconfig")
		return 1
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                  scheme.New(),
		Metrics:                 metricsserver.Options{BindAddress: opts.MetricsAddr},
		HealthProbeBindAddress:  opts.ProbeAddr,
		LeaderElection:          opts.LeaderElect,
		LeaderElectionID:        opts.LeaderElectID,
		LeaderElectionNamespace: opts.LeaderElectNS,
		// Stepping down at once on shutdown lets a new leader start without waiting for the lease.
		LeaderElectionReleaseOnCancel: true,
		Cache: cache.Options{
			// Managed fields are never read and are a large share of every cached object.
			DefaultTransform: cache.TransformStripManagedFields(),
		},
	})
	if err != nil {
		log.Error(err, "Cannot create the manager")
		return 1
	}
	db, err := vulndb.New(vulndb.Options{
		Repositories:  opts.DB.Repositories,
		CheckInterval: opts.DB.CheckInterval,
		LocalPath:     opts.DB.Path,
		CacheDir:      opts.CacheDir,
		Registry:      registry.NewClient(registry.Options{InsecureHosts: opts.Registry.InsecureRegistries}),
		Log:           ctrl.Log.WithName("vulndb"),
	})
	if err == nil {
		err = mgr.Add(db)
	}
	if err != nil {
		log.Error(err, "Cannot set up the vulnerability DB")
		return 1
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "Cannot add the health check")
		return 1
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
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
