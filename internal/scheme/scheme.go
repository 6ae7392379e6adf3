// Package scheme builds the runtime.Scheme of every kind ImageGuard reads or writes.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	wgpolicyv1alpha2 "github.com/imageguard/imageguard/api/wgpolicyk8s/v1alpha2"
)

// New returns a scheme with the built-in Kubernetes kinds and the ImageGuard API.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(securityv1alpha1.AddToScheme(s))
	utilruntime.Must(wgpolicyv1alpha2.AddToScheme(s))
	return s
}
