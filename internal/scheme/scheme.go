// Package scheme builds the runtime.Scheme of every kind ImageGuard reads or writes.
package scheme

import (
	openreportsv1alpha1 "github.com/openreports/reports-api/apis/openreports.io/v1alpha1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
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
	utilruntime.Must(openreportsv1alpha1.Install(s))
	// Only the metadata of CRDs is read (which report kinds are installed).
	utilruntime.Must(apiextensionsv1.AddToScheme(s))
	return s
}
