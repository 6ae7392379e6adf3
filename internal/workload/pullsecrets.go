package workload

import (
	"context"
	"fmt"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/imageguard/imageguard/internal/registry"
)

// MaxPullSecrets bounds the pull secrets read for one pod spec and its service account: each is an
// API request, and the names are the pod's author's to choose.
const MaxPullSecrets = 16

// PullSecrets returns the docker config Secrets a pod spec in namespace and its service account
// name (a nil spec: the namespace's default service account), read by name with reader, which must
// be uncached: ImageGuard never lists or watches Secrets. The first MaxPullSecrets names are read,
// the pod's own first.
func PullSecrets(ctx context.Context, reader client.Reader, namespace string, spec *corev1.PodSpec) ([]corev1.Secret, error) {
	var order []string
	names := map[string]bool{}
	add := func(name string) {
		if !names[name] && len(order) < MaxPullSecrets {
			names[name] = true
			order = append(order, name)
		}
	}
	saName := "default"
	if spec != nil {
		for _, ref := range spec.ImagePullSecrets {
			add(ref.Name)
		}
		if spec.ServiceAccountName != "" {
			saName = spec.ServiceAccountName
		}
	}
	sa := &corev1.ServiceAccount{}
	err := reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: saName}, sa)
	switch {
	case err == nil:
		for _, ref := range sa.ImagePullSecrets {
			add(ref.Name)
		}
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading service account %s/%s: %w", namespace, saName, err)
	}
	var secrets []corev1.Secret
	for _, n := range order {
		s := corev1.Secret{}
		err := reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: n}, &s)
		if apierrors.IsNotFound(err) {
			continue // the kubelet also goes on without a missing pull secret
		}
		if err != nil {
			return nil, fmt.Errorf("reading pull secret %s/%s: %w", namespace, n, err)
		}
		secrets = append(secrets, s)
	}
	return secrets, nil
}

// Keychain returns the credentials of the pull secrets of specs, all in namespace.
func Keychain(ctx context.Context, reader client.Reader, namespace string, specs ...*corev1.PodSpec) (authn.Keychain, error) {
	var secrets []corev1.Secret
	seen := map[string]bool{}
	for _, spec := range specs {
		s, err := PullSecrets(ctx, reader, namespace, spec)
		if err != nil {
			return nil, err
		}
		for _, sec := range s {
			if !seen[sec.Name] {
				seen[sec.Name] = true
				secrets = append(secrets, sec)
			}
		}
	}
	return registry.KeychainFromSecrets(ctx, secrets)
}

// LazyKeychain reads the pull secrets (load) only when a registry asks for credentials, once: a
// re-match of a kept inventory, or a cached digest, then costs no API request.
func LazyKeychain(load func() (authn.Keychain, error)) authn.Keychain {
	return &lazyKeychain{load: load}
}

type lazyKeychain struct {
	once  sync.Once
	load  func() (authn.Keychain, error)
	chain authn.Keychain
	err   error
}

// Resolve implements authn.Keychain.
func (k *lazyKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	k.once.Do(func() { k.chain, k.err = k.load() })
	if k.err != nil {
		return nil, k.err
	}
	return k.chain.Resolve(target)
}
