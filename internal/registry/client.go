package registry

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	k8schain "github.com/google/go-containerregistry/pkg/authn/kubernetes"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"

	"github.com/imageguard/imageguard/internal/imageref"
)

// Options configure how registries are reached.
type Options struct {
	// InsecureHosts are registry hosts (host or host:port) reached over plain HTTP, or over TLS
	// without verifying the certificate.
	InsecureHosts []string
	// Platform picks the image of a multi-arch index; empty means linux/amd64.
	Platform *v1.Platform
	// UserAgent is sent with every request.
	UserAgent string
	// Timeout is the deadline of a connection attempt, a TLS handshake, the wait for a
	// response's headers, a whole request that is not a blob download, and the wait for a
	// blob's next bytes; 0 means DefaultTimeout.
	Timeout time.Duration
	// MaxResponseBytes bounds every answer that is not a blob (manifests, indexes, tokens);
	// 0 means DefaultMaxResponseBytes.
	MaxResponseBytes int64
}

// Client reaches registries with one shared HTTP transport, whose every request has deadlines
// and a size bound (see boundedTransport).
type Client struct {
	opts      Options
	transport http.RoundTripper
	insecure  http.RoundTripper
}

// NewClient returns a Client for opts.
func NewClient(opts Options) *Client {
	if opts.UserAgent == "" {
		opts.UserAgent = "imageguard"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = DefaultMaxResponseBytes
	}
	base := remote.DefaultTransport.(*http.Transport).Clone()
	base.DialContext = dialer(opts.Timeout).DialContext
	base.TLSHandshakeTimeout = opts.Timeout
	base.ResponseHeaderTimeout = opts.Timeout
	insecure := base.Clone()
	insecure.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // only for hosts the operator listed
	limits := &rateLimits{}
	bound := func(rt http.RoundTripper) http.RoundTripper {
		return &boundedTransport{base: rt, timeout: opts.Timeout, maxBytes: opts.MaxResponseBytes, limits: limits, now: time.Now}
	}
	return &Client{opts: opts, transport: bound(base), insecure: bound(insecure)}
}

// Timeout returns the deadline of one registry request (see Options.Timeout).
func (c *Client) Timeout() time.Duration { return c.opts.Timeout }

// Options returns the options the Client was made with, for a worker process to make its twin.
func (c *Client) Options() Options { return c.opts }

// Platform returns the platform images are resolved for.
func (c *Client) Platform() v1.Platform {
	if c.opts.Platform != nil {
		return *c.opts.Platform
	}
	return v1.Platform{OS: "linux", Architecture: "amd64"}
}

// isInsecure reports whether registry is one of the insecure hosts, whatever the spelling of
// either (see imageref.CanonicalHost).
func (c *Client) isInsecure(registry string) bool {
	registry = imageref.CanonicalHost(registry)
	return slices.ContainsFunc(c.opts.InsecureHosts, func(h string) bool { return imageref.CanonicalHost(h) == registry })
}

// ParseReference parses an image reference, allowing plain HTTP for the insecure hosts.
func (c *Client) ParseReference(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, Errorf(KindUnsupported, "malformed image reference %q: %v", ref, err)
	}
	if c.isInsecure(r.Context().RegistryStr()) {
		return name.ParseReference(ref, name.Insecure)
	}
	return r, nil
}

// RemoteOptions returns go-containerregistry options for a request to ref's registry with the
// credentials of keychain (anonymous when nil).
func (c *Client) RemoteOptions(ctx context.Context, ref name.Reference, keychain authn.Keychain) []remote.Option {
	if keychain == nil {
		keychain = authn.NewMultiKeychain()
	}
	rt := c.transport
	if c.isInsecure(ref.Context().RegistryStr()) {
		rt = c.insecure
	}
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(keychain),
		remote.WithTransport(rt),
		remote.WithPlatform(c.Platform()),
		remote.WithUserAgent(c.opts.UserAgent),
		// A failing registry is retried by the workqueue's backoff, not by blocking a worker.
		remote.WithRetryBackoff(remote.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Steps: 2}),
	}
}

// ResolveDigest returns the manifest digest of ref (a HEAD request for a tag; no request for a
// digest reference).
func (c *Client) ResolveDigest(ctx context.Context, ref string, keychain authn.Keychain) (string, error) {
	r, err := c.ParseReference(ref)
	if err != nil {
		return "", err
	}
	if d, ok := r.(name.Digest); ok {
		return d.DigestStr(), nil
	}
	desc, err := remote.Head(r, c.RemoteOptions(ctx, r, keychain)...)
	if err != nil {
		return "", Classify(fmt.Errorf("resolving %s: %w", ref, err))
	}
	return desc.Digest.String(), nil
}

// KeychainFromSecrets returns a keychain of the docker config pull secrets given
// (kubernetes.io/dockerconfigjson and kubernetes.io/dockercfg), matched to registry hosts the way
// the kubelet matches them. Secrets of other types are ignored.
func KeychainFromSecrets(ctx context.Context, secrets []corev1.Secret) (authn.Keychain, error) {
	var pull []corev1.Secret
	for _, s := range secrets {
		if s.Type == corev1.SecretTypeDockerConfigJson || s.Type == corev1.SecretTypeDockercfg {
			pull = append(pull, s)
		}
	}
	if len(pull) == 0 {
		return authn.NewMultiKeychain(), nil
	}
	kc, err := k8schain.NewFromPullSecrets(ctx, pull)
	if err != nil {
		names := make([]string, 0, len(pull))
		for _, s := range pull {
			names = append(names, s.Namespace+"/"+s.Name)
		}
		// The parse error may quote the secret's content: name the secrets only.
		return nil, fmt.Errorf("pull secrets %s: malformed docker config", strings.Join(names, ", "))
	}
	return kc, nil
}
