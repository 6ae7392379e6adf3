// Command localcluster runs a local control plane (etcd, kube-apiserver and kube-controller-manager
// from hack/control-plane.sh, with the ImageGuard CRDs installed) until it is stopped, for
// `make demo`: Deployments make their ReplicaSets and pods for real (no kubelet runs them).
// It writes an admin kubeconfig to --write-kubeconfig and removes it on exit.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/imageguard/imageguard/internal/testenv"
)

func main() {
	kubeconfig := flag.String("write-kubeconfig", ".demo/kubeconfig", "Where to write the admin kubeconfig.")
	flag.Parse()

	env, err := testenv.Start(testenv.Options{ControllerManager: true})
	if err != nil {
		fmt.Fprintf(os.Stderr, "localcluster: %v\n", err)
		os.Exit(1)
	}
	data, err := os.ReadFile(env.Kubeconfig)
	if err == nil {
		err = os.WriteFile(*kubeconfig, data, 0o600)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "localcluster: writing the kubeconfig: %v\n", err)
		_ = env.Stop()
		os.Exit(1)
	}
	fmt.Printf("localcluster: API server at %s, kubeconfig %s\n", env.Config.Host, *kubeconfig)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	_ = os.Remove(*kubeconfig)
	if err := env.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "localcluster: stopping: %v\n", err)
		os.Exit(1)
	}
}
