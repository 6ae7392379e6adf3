package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/workload"
)

// podContainer is one container of a pod, with the image ID the kubelet reported for it.
type podContainer struct {
	workload.Container
	// ImageID is the kubelet's resolved image, when it reported one.
	ImageID string
}

// podContainers lists every container of pod, init and ephemeral ones included, with the image
// ID the kubelet reported for it.
func podContainers(pod *corev1.Pod) []podContainer {
	ids := map[string]string{}
	for _, statuses := range [][]corev1.ContainerStatus{
		pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses, pod.Status.EphemeralContainerStatuses,
	} {
		for _, s := range statuses {
			ids[s.Name] = s.ImageID
		}
	}
	containers := workload.Containers(&pod.Spec)
	out := make([]podContainer, 0, len(containers))
	for _, c := range containers {
		out = append(out, podContainer{Container: c, ImageID: ids[c.Name]})
	}
	return out
}

// digestOf returns the sha256 digest in a kubelet image ID such as
// docker-pullable://registry/app@sha256:..., registry/app@sha256:... or sha256:...; "" otherwise.
// A bare sha256 (an image config ID from some runtimes) is not a manifest digest and is ignored
// unless it follows an '@'.
func digestOf(imageID string) string {
	i := strings.LastIndex(imageID, "@sha256:")
	if i < 0 {
		return ""
	}
	d := imageID[i+1:]
	if !digestPattern(d) {
		return ""
	}
	return d
}

func digestPattern(d string) bool {
	if len(d) != len("sha256:")+64 || !strings.HasPrefix(d, "sha256:") {
		return false
	}
	for _, c := range d[len("sha256:"):] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// pullSecrets returns the docker config Secrets the pod and its service account name, read by name
// with the uncached reader: ImageGuard never lists or watches Secrets.
func pullSecrets(ctx context.Context, reader client.Reader, pod *corev1.Pod) ([]corev1.Secret, error) {
	names := map[string]bool{}
	for _, ref := range pod.Spec.ImagePullSecrets {
		names[ref.Name] = true
	}
	saName := pod.Spec.ServiceAccountName
	if saName == "" {
		saName = "default"
	}
	sa := &corev1.ServiceAccount{}
	err := reader.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: saName}, sa)
	switch {
	case err == nil:
		for _, ref := range sa.ImagePullSecrets {
			names[ref.Name] = true
		}
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading service account %s/%s: %w", pod.Namespace, saName, err)
	}
	var secrets []corev1.Secret
	for n := range names {
		s := corev1.Secret{}
		err := reader.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: n}, &s)
		if apierrors.IsNotFound(err) {
			continue // the kubelet also goes on without a missing pull secret
		}
		if err != nil {
			return nil, fmt.Errorf("reading pull secret %s/%s: %w", pod.Namespace, n, err)
		}
		secrets = append(secrets, s)
	}
	return secrets, nil
}

// keychainFor returns the credentials of the pull secrets of pods.
func keychainFor(ctx context.Context, reader client.Reader, pods []*corev1.Pod) (authn.Keychain, error) {
	var secrets []corev1.Secret
	seen := map[string]bool{}
	for _, pod := range pods {
		s, err := pullSecrets(ctx, reader, pod)
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

// lazyKeychain reads the pull secrets only when a registry asks for credentials: a re-match of a
// kept inventory then costs no API request.
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
