// Package testenv starts a real control plane for tests: etcd and kube-apiserver built by
// hack/control-plane.sh, with the ImageGuard CRDs of config/crd/bases installed, and, when asked,
// kube-controller-manager, so that Deployments, ReplicaSets, Jobs and CronJobs make their pods for
// real (no scheduler or kubelet runs them: they stay Pending).
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/scheme"
)

// Env is a running control plane with a client and a kubeconfig file for kubectl.
type Env struct {
	Environment *envtest.Environment
	Config      *rest.Config
	Client      client.Client
	// Kubeconfig is the path of a kubeconfig file for an admin user of the control plane.
	Kubeconfig string
	// Kubectl is the path of the kubectl built with the control plane.
	Kubectl string

	dir               string
	controllerManager *exec.Cmd
	// controllerManagerDone is closed when the controller manager exited.
	controllerManagerDone chan struct{}
	// apiServerCertDir is the API server's certificate folder when it is restartable.
	apiServerCertDir string
}

// Options tune the control plane.
type Options struct {
	// APIServerArgs are extra kube-apiserver flags, e.g. admission plugins.
	APIServerArgs map[string]string
	// PolicyReportCRDs also installs the wgpolicyk8s.io PolicyReport CRDs.
	PolicyReportCRDs bool
	// NoCRDs installs no CRD, for tests that install them as users do (helm, kubectl).
	NoCRDs bool
	// ValidatingWebhooks are installed pointing at a local webhook server, whose host, port and
	// certificate folder are in Environment.WebhookInstallOptions.
	ValidatingWebhooks []*admissionregistrationv1.ValidatingWebhookConfiguration
	// ControllerManager also runs kube-controller-manager (the workload controllers, the garbage
	// collector and the service account controller), each controller as its own service account,
	// as clusters run it.
	ControllerManager bool
	// RestartableAPIServer keeps the API server's certificates in a folder of the test's, so that
	// RestartAPIServer brings it back on the same port and etcd with the same certificates, and
	// clients keep working.
	RestartableAPIServer bool
}

// controllers are the kube-controller-manager controllers a test cluster runs: those that make
// and remove pods of workloads, and what they need.
var controllers = []string{
	"deployment-controller", "replicaset-controller", "statefulset-controller", "daemonset-controller",
	"job-controller", "cronjob-controller", "garbage-collector-controller", "serviceaccount-controller",
	"namespace-controller", "ttl-after-finished-controller",
}

// ValidatingWebhooks returns the webhook configuration generated from ImageGuard's markers
// (config/webhook/manifests.yaml), selecting only namespaces labelled selectLabel=true so that
// other tests of a shared control plane are not judged.
func ValidatingWebhooks(selectLabel string) ([]*admissionregistrationv1.ValidatingWebhookConfiguration, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(root, "config", "webhook", "manifests.yaml"))
	if err != nil {
		return nil, err
	}
	cfg := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := yaml.Unmarshal(bytes.TrimPrefix(raw, []byte("---\n")), cfg); err != nil {
		return nil, fmt.Errorf("config/webhook/manifests.yaml: %w", err)
	}
	cfg.Name = "imageguard-test"
	for i := range cfg.Webhooks {
		cfg.Webhooks[i].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{selectLabel: "true"}}
	}
	return []*admissionregistrationv1.ValidatingWebhookConfiguration{cfg}, nil
}

// RepoRoot returns the root of the module (the folder holding go.mod), found from the working
// directory, which is the package's folder under `go test`.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// assetsDir returns the folder of etcd, kube-apiserver and kubectl: KUBEBUILDER_ASSETS when set
// (make test sets it), otherwise what hack/control-plane.sh prints, building them once if needed,
// so that a plain `go test ./...` works too.
func assetsDir(root string) (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(root, "hack", "control-plane.sh"))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("hack/control-plane.sh: %w: %s", err, stderr.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// testScheme is the controller's scheme plus CRDs, which tests read.
func testScheme() *runtime.Scheme {
	s := scheme.New()
	utilruntime.Must(apiextensionsv1.AddToScheme(s))
	return s
}

// Start starts etcd and kube-apiserver, installs the CRDs and waits until they are served.
func Start(opts Options) (*Env, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets, err := assetsDir(root)
	if err != nil {
		return nil, err
	}
	var crds []string
	if !opts.NoCRDs {
		crds = append(crds, filepath.Join(root, "config", "crd", "bases"))
	}
	if opts.PolicyReportCRDs {
		crds = append(crds, filepath.Join(root, "config", "crd", "policyreport"))
	}
	environment := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     crds,
		ErrorIfCRDPathMissing: len(crds) > 0,
		Scheme:                testScheme(),
		// A busy 2-core CI machine can take a while to start etcd and the API server.
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	environment.WebhookInstallOptions.ValidatingWebhooks = opts.ValidatingWebhooks
	apiServer := environment.ControlPlane.GetAPIServer()
	var certDir string
	if opts.RestartableAPIServer {
		if certDir, err = os.MkdirTemp("", "imageguard-apiserver-"); err != nil {
			return nil, err
		}
		apiServer.CertDir = certDir
		// It is stopped while clients hold watches open: do not wait a minute for them.
		environment.ControlPlaneStopTimeout = 15 * time.Second
	}
	for name, value := range opts.APIServerArgs {
		apiServer.Configure().Set(name, value)
	}
	cfg, err := environment.Start()
	if err != nil {
		return nil, fmt.Errorf("starting the control plane from %s: %w", assets, err)
	}
	env := &Env{Environment: environment, Config: cfg, apiServerCertDir: certDir}
	if err := env.setUp(); err != nil {
		_ = environment.Stop()
		return nil, err
	}
	if opts.ControllerManager {
		if err := env.startControllerManager(); err != nil {
			_ = env.Stop()
			return nil, err
		}
	}
	return env, nil
}

// startControllerManager runs kube-controller-manager against the control plane, its log in the
// env's folder.
func (e *Env) startControllerManager() error {
	user, err := e.Environment.AddUser(envtest.User{Name: "system:kube-controller-manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("adding the controller manager's user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return err
	}
	path := filepath.Join(e.dir, "controller-manager.kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(e.dir, "controller-manager.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(e.Environment.BinaryAssetsDirectory, "kube-controller-manager"),
		"--kubeconfig="+path, "--controllers="+strings.Join(controllers, ","),
		"--use-service-account-credentials=true", "--leader-elect=false", "--secure-port=0",
		// Tests want their pods at once, and deleted ones replaced at once.
		"--concurrent-deployment-syncs=5", "--concurrent-replicaset-syncs=5")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting kube-controller-manager: %w", err)
	}
	e.controllerManager = cmd
	e.controllerManagerDone = make(chan struct{})
	go func() {
		defer close(e.controllerManagerDone)
		_ = cmd.Wait() // how it exited is in its log
		logFile.Close()
	}()
	return nil
}

// ControllerManagerLog returns what kube-controller-manager logged, for a failing test to show.
func (e *Env) ControllerManagerLog() string {
	raw, _ := os.ReadFile(filepath.Join(e.dir, "controller-manager.log"))
	return string(raw)
}

func (e *Env) setUp() error {
	var err error
	e.Client, err = client.New(e.Config, client.Options{Scheme: e.Environment.Scheme})
	if err != nil {
		return err
	}
	user, err := e.Environment.AddUser(envtest.User{Name: "test-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("adding an admin user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return err
	}
	e.dir, err = os.MkdirTemp("", "imageguard-testenv-")
	if err != nil {
		return err
	}
	e.Kubeconfig = filepath.Join(e.dir, "kubeconfig")
	if err := os.WriteFile(e.Kubeconfig, kubeconfig, 0o600); err != nil {
		return err
	}
	e.Kubectl = filepath.Join(e.Environment.BinaryAssetsDirectory, "kubectl")
	if len(e.Environment.CRDDirectoryPaths) == 0 {
		return nil
	}
	// The API server serves new kinds a moment after the CRDs are established.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		err := e.Client.List(ctx, &securityv1alpha1.ImageScanReportList{})
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("the API server does not serve ImageScanReports: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// StopAPIServer stops the API server; etcd keeps running. Needs Options.RestartableAPIServer.
func (e *Env) StopAPIServer() error {
	if e.apiServerCertDir == "" {
		return errors.New("the API server was not started restartable")
	}
	err := e.Environment.ControlPlane.GetAPIServer().Stop()
	// Past StopTimeout it was killed, which is what a crashed API server does anyway.
	if err != nil && strings.Contains(err.Error(), "timeout waiting for process") {
		return nil
	}
	return err
}

// StartAPIServer starts the API server StopAPIServer stopped, on the same port, etcd and
// certificates, and waits until it serves.
func (e *Env) StartAPIServer() error {
	if e.apiServerCertDir == "" {
		return errors.New("the API server was not started restartable")
	}
	return e.Environment.ControlPlane.GetAPIServer().Start()
}

// KubectlCmd returns a kubectl command against the control plane.
func (e *Env) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, e.Kubectl, append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.Kubeconfig)
	return cmd
}

// RunKubectl runs kubectl against the control plane and returns its standard output; a failure
// carries its standard error.
func (e *Env) RunKubectl(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := e.KubectlCmd(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// Stop stops the control plane (and the controller manager) and removes its kubeconfig.
func (e *Env) Stop() error {
	if e.controllerManager != nil {
		_ = e.controllerManager.Process.Signal(os.Interrupt)
		select {
		case <-e.controllerManagerDone:
		case <-time.After(10 * time.Second):
			_ = e.controllerManager.Process.Kill()
			<-e.controllerManagerDone
		}
	}
	err := e.Environment.Stop()
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
	if e.apiServerCertDir != "" {
		_ = os.RemoveAll(e.apiServerCertDir)
	}
	return err
}
