package testutil

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// setupHeader marks requests sent by the Registry's own helpers (Push, PushIndex, PublishDB).
// They bypass counters, faults and handler wrappers so that arranging a test never disturbs what
// the test measures, and a test can stage new content while the registry is "down".
const setupHeader = "X-Testutil-Setup"

// Counts is a snapshot of the requests a Registry has served since it started or since the last
// ResetCounts. Requests sent by the Registry's own helpers are not counted.
type Counts struct {
	// Requests counts every request, including the /v2/ ping, uploads and faulted requests.
	Requests int
	// ManifestGETs counts GET /v2/<name>/manifests/<reference>.
	ManifestGETs int
	// ManifestHEADs counts HEAD /v2/<name>/manifests/<reference>.
	ManifestHEADs int
	// BlobGETs counts GET /v2/<name>/blobs/<digest> (blob uploads excluded).
	BlobGETs int
	// BlobHEADs counts HEAD /v2/<name>/blobs/<digest> (blob uploads excluded).
	BlobHEADs int
	// BlobBytes counts the bytes of the bodies of blob GETs.
	BlobBytes int64
}

// FaultFunc answers a request instead of the registry when it returns true. It may write any
// response (or none), sleep, or block; returning false lets the request through untouched.
type FaultFunc func(w http.ResponseWriter, r *http.Request) bool

// RegistryOption configures NewRegistry.
type RegistryOption func(*registryOptions)

type registryOptions struct {
	user, password string
	referrers      bool
	wrappers       []func(http.Handler) http.Handler
}

// WithBasicAuth makes the registry demand HTTP Basic credentials. Requests without them get 401
// with `WWW-Authenticate: Basic realm="testutil"`, the challenge go-containerregistry's transport
// answers by sending authn.Basic credentials on every following request (no token exchange).
func WithBasicAuth(user, password string) RegistryOption {
	return func(o *registryOptions) {
		o.user, o.password = user, password
	}
}

// WithReferrers makes the registry serve the OCI 1.1 referrers API, each descriptor with its
// manifest's annotations as the distribution spec asks (go-containerregistry's registry leaves
// them out); without it, clients fall back to the referrers tag schema.
func WithReferrers() RegistryOption {
	return func(o *registryOptions) { o.referrers = true }
}

// WithHandlerWrapper wraps the registry handler (inside the authentication check) so a test can
// inject faults fixed for the registry's lifetime: hangs, 5xx, truncated bodies. Several wrappers
// nest in the order given, the first outermost. Use (*Registry).SetFault for faults that change
// during a test.
func WithHandlerWrapper(wrap func(http.Handler) http.Handler) RegistryOption {
	return func(o *registryOptions) {
		o.wrappers = append(o.wrappers, wrap)
	}
}

// Registry is an in-process OCI registry (go-containerregistry's pkg/registry, blobs in memory)
// served over plain HTTP on 127.0.0.1, which go-containerregistry and Trivy reach without TLS.
// Tag lists and the catalog are paginated as Distribution does it (n, last, and a Link header to
// the next page), which go-containerregistry's registry does not do on its own.
//
// A request passes, outermost first: the counters, the fault set with SetFault, the handler
// wrappers, the Basic auth check, the registry.
type Registry struct {
	server *httptest.Server
	host   string
	auth   authn.Authenticator

	// setup serves the Registry's own helper traffic: auth and registry only.
	setup http.Handler
	// guarded serves everyone else: wrappers, auth and registry.
	guarded http.Handler

	closed chan struct{}

	mu     sync.Mutex
	counts Counts
	fault  FaultFunc
}

// NewRegistry starts a registry and stops it when the test ends.
func NewRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()
	var o registryOptions
	for _, opt := range opts {
		opt(&o)
	}

	// The registry logs every request to stderr by default, which buries test output.
	quiet := log.New(io.Discard, "", 0)
	h := http.Handler(registry.New(registry.Logger(quiet), registry.WithReferrersSupport(o.referrers)))
	if o.referrers {
		h = referrerAnnotations(h)
	}
	h = paginated(h)
	r := &Registry{auth: authn.Anonymous, closed: make(chan struct{})}
	if o.user != "" || o.password != "" {
		h = basicAuth(h, o.user, o.password)
		r.auth = &authn.Basic{Username: o.user, Password: o.password}
	}
	r.setup = h
	for i := len(o.wrappers) - 1; i >= 0; i-- {
		h = o.wrappers[i](h)
	}
	r.guarded = h

	r.server = httptest.NewServer(r)
	r.host = r.server.Listener.Addr().String()
	t.Cleanup(func() {
		// httptest.Server.Close waits for active requests; closing the connections first cancels
		// the contexts of handlers that hang (see HangFault) so Close cannot block the test.
		close(r.closed)
		r.server.CloseClientConnections()
		r.server.Close()
	})
	return r
}

// Host returns the registry's host:port, e.g. "127.0.0.1:34567", for image references.
func (r *Registry) Host() string { return r.host }

// Counts returns a snapshot of the request counters.
func (r *Registry) Counts() Counts {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts
}

// ResetCounts zeroes the request counters.
func (r *Registry) ResetCounts() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.counts = Counts{}
}

// SetFault installs f in front of the registry, replacing any earlier fault; nil removes it.
// It is safe to call while requests are in flight, e.g. to take the registry "down" mid-test.
func (r *Registry) SetFault(f FaultFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fault = f
}

// HangFault returns a fault that holds every request open until the client gives up or the
// registry shuts down, the way an unresponsive registry behaves.
func (r *Registry) HangFault() FaultFunc {
	return func(_ http.ResponseWriter, req *http.Request) bool {
		select {
		case <-req.Context().Done():
		case <-r.closed:
		}
		return true
	}
}

// StatusFault returns a fault that answers every request with the given HTTP status and an OCI
// error body, as a registry that is up but failing does.
func StatusFault(code int) FaultFunc {
	return func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"errors":[{"code":"UNAVAILABLE","message":"injected by testutil"}]}`)
		return true
	}
}

// ServeHTTP implements http.Handler.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Header.Get(setupHeader) != "" {
		r.setup.ServeHTTP(w, req)
		return
	}
	r.mu.Lock()
	r.count(req)
	fault := r.fault
	r.mu.Unlock()
	if fault != nil && fault(w, req) {
		return
	}
	if req.Method == http.MethodGet && classify(req.URL.Path) == "blobs" {
		cw := &countingWriter{ResponseWriter: w}
		r.guarded.ServeHTTP(cw, req)
		r.mu.Lock()
		r.counts.BlobBytes += cw.n
		r.mu.Unlock()
		return
	}
	r.guarded.ServeHTTP(w, req)
}

// countingWriter counts the body bytes written through it.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// Unwrap gives http.ResponseController the writer below.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// count classifies req; the caller holds r.mu.
func (r *Registry) count(req *http.Request) {
	r.counts.Requests++
	kind := classify(req.URL.Path)
	switch {
	case kind == "manifests" && req.Method == http.MethodGet:
		r.counts.ManifestGETs++
	case kind == "manifests" && req.Method == http.MethodHead:
		r.counts.ManifestHEADs++
	case kind == "blobs" && req.Method == http.MethodGet:
		r.counts.BlobGETs++
	case kind == "blobs" && req.Method == http.MethodHead:
		r.counts.BlobHEADs++
	}
}

// classify returns "manifests" or "blobs" for /v2/<name>/manifests/<ref> and
// /v2/<name>/blobs/<digest>, and "" for anything else (ping, uploads, tag lists). Repository names
// contain slashes, so the kind is the second-to-last path segment.
func classify(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	parts := strings.Split(rest, "/")
	if len(parts) < 3 || parts[len(parts)-1] == "" {
		return ""
	}
	switch kind := parts[len(parts)-2]; kind {
	case "manifests", "blobs":
		return kind
	}
	return ""
}

func basicAuth(next http.Handler, user, password string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		u, p, ok := req.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 ||
			subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="testutil"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		next.ServeHTTP(w, req)
	})
}

// Push uploads img as <host>/<repo>:<tag> and returns that reference and the manifest digest. The
// upload uses the registry's own credentials and is neither counted nor faulted.
func (r *Registry) Push(t testing.TB, repo, tag string, img v1.Image) (ref string, digest v1.Hash) {
	t.Helper()
	tagRef := r.tag(t, repo, tag)
	if err := remote.Write(tagRef, img, r.setupOptions()...); err != nil {
		t.Fatalf("push %s: %v", tagRef, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatalf("digest of %s: %v", tagRef, err)
	}
	return tagRef.String(), d
}

// PushIndex uploads a multi-platform index (and every image in it) as <host>/<repo>:<tag> and
// returns that reference and the index digest. See IndexFromImages to build one.
func (r *Registry) PushIndex(t testing.TB, repo, tag string, idx v1.ImageIndex) (ref string, digest v1.Hash) {
	t.Helper()
	tagRef := r.tag(t, repo, tag)
	if err := remote.WriteIndex(tagRef, idx, r.setupOptions()...); err != nil {
		t.Fatalf("push index %s: %v", tagRef, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatalf("digest of index %s: %v", tagRef, err)
	}
	return tagRef.String(), d
}

// DeleteTag removes <host>/<repo>:<tag> (the manifest stays under its digest), neither counted
// nor faulted.
func (r *Registry) DeleteTag(t testing.TB, repo, tag string) {
	t.Helper()
	if err := remote.Delete(r.tag(t, repo, tag), r.setupOptions()...); err != nil {
		t.Fatalf("delete %s/%s:%s: %v", r.host, repo, tag, err)
	}
}

func (r *Registry) tag(t testing.TB, repo, tag string) name.Tag {
	t.Helper()
	ref, err := name.NewTag(r.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatalf("reference %s/%s:%s: %v", r.host, repo, tag, err)
	}
	return ref
}

func (r *Registry) setupOptions() []remote.Option {
	return []remote.Option{
		remote.WithAuth(r.auth),
		remote.WithTransport(setupTransport{next: remote.DefaultTransport}),
	}
}

// setupTransport tags the Registry's own helper requests; see setupHeader.
type setupTransport struct{ next http.RoundTripper }

func (s setupTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set(setupHeader, "1")
	return s.next.RoundTrip(req)
}

// referrerAnnotations gives each descriptor of next's referrers answers the annotations of the
// manifest it names.
func referrerAnnotations(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		repo, _, ok := strings.Cut(strings.TrimPrefix(req.URL.Path, "/v2/"), "/referrers/")
		if !ok || req.Method != http.MethodGet || !strings.HasPrefix(req.URL.Path, "/v2/") {
			next.ServeHTTP(w, req)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, req)
		var idx v1.IndexManifest
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &idx) != nil {
			copyRecorded(w, rec, rec.Body.Bytes())
			return
		}
		for i, d := range idx.Manifests {
			get := httptest.NewRequestWithContext(req.Context(), http.MethodGet, "/v2/"+repo+"/manifests/"+d.Digest.String(), nil)
			get.Header = req.Header.Clone()
			get.Header.Set("Accept", string(d.MediaType))
			m := httptest.NewRecorder()
			next.ServeHTTP(m, get)
			var manifest struct {
				Annotations map[string]string `json:"annotations"`
			}
			if m.Code == http.StatusOK && json.Unmarshal(m.Body.Bytes(), &manifest) == nil {
				idx.Manifests[i].Annotations = manifest.Annotations
			}
		}
		body, err := json.Marshal(idx)
		if err != nil {
			copyRecorded(w, rec, rec.Body.Bytes())
			return
		}
		copyRecorded(w, rec, body)
	})
}

func copyRecorded(w http.ResponseWriter, rec *httptest.ResponseRecorder, body []byte) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rec.Code)
	_, _ = w.Write(body)
}

// paginated serves tag lists and the catalog of next in pages: sorted, from after last, n at a
// time, with a Link header to the next page while there is one.
func paginated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		path := req.URL.Path
		isTags := strings.HasPrefix(path, "/v2/") && strings.HasSuffix(path, "/tags/list")
		if req.Method != http.MethodGet || !isTags && path != "/v2/_catalog" {
			next.ServeHTTP(w, req)
			return
		}
		q := req.URL.Query()
		n, _ := strconv.Atoi(q.Get("n"))
		last := q.Get("last")
		all := req.Clone(req.Context())
		all.URL.RawQuery = ""
		if !isTags {
			all.URL.RawQuery = "n=1000000"
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, all)
		var body map[string]any
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &body) != nil {
			copyRecorded(w, rec, rec.Body.Bytes())
			return
		}
		field := "tags"
		if !isTags {
			field = "repositories"
		}
		var items []string
		if list, ok := body[field].([]any); ok {
			for _, v := range list {
				if s, ok := v.(string); ok && s > last {
					items = append(items, s)
				}
			}
		}
		slices.Sort(items)
		if n > 0 && len(items) > n {
			items = items[:n]
			u := url.URL{Path: path, RawQuery: url.Values{"n": {strconv.Itoa(n)}, "last": {items[n-1]}}.Encode()}
			rec.Header().Set("Link", fmt.Sprintf("<%s>; rel=\"next\"", u.String()))
		}
		if items == nil {
			items = []string{}
		}
		body[field] = items
		data, err := json.Marshal(body)
		if err != nil {
			copyRecorded(w, rec, rec.Body.Bytes())
			return
		}
		copyRecorded(w, rec, data)
	})
}
