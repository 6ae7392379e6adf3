package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imageguard/imageguard/internal/imageref"
)

// DefaultTimeout is the deadline of one registry request that is not a blob download, and of
// every wait for a response's headers or for a blob's next bytes.
const DefaultTimeout = 30 * time.Second

// DefaultMaxResponseBytes bounds the answers that are not blobs: manifests, indexes, tokens. A
// real manifest is a few KiB; go-containerregistry alone would read 100 MiB.
const DefaultMaxResponseBytes = 4 << 20

// maxRetryAfter caps the Retry-After a registry may ask for, so that one answer cannot stop the
// scans of a host for days.
const maxRetryAfter = time.Hour

// boundedTransport gives every registry request deadlines and a size bound, and keeps the
// Retry-After of 429 answers per host so that no request is sent to the host before it passes.
//
// Blob downloads (GET /v2/<name>/blobs/<digest>) may take as long as their caller's context
// allows (the scan timeout) but fail once no byte arrived for timeout; their size is bounded by
// the descriptor, which go-containerregistry checks as it reads. Every other request must end
// within timeout and its answer may not exceed maxBytes, checked from Content-Length before the
// body is read and again while it is read.
type boundedTransport struct {
	base     http.RoundTripper
	timeout  time.Duration
	maxBytes int64
	limits   *rateLimits
	now      func() time.Time
}

func (t *boundedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	host := imageref.CanonicalHost(req.URL.Host)
	if wait := t.limits.wait(host, t.now()); wait > 0 {
		return nil, &Error{Kind: KindRateLimited, RetryAfter: wait,
			Err: fmt.Errorf("%s asked for no request before %s (Retry-After)", host, t.now().Add(wait).UTC().Format(time.RFC3339))}
	}
	blob := isBlobDownload(req)
	var ctx context.Context
	var cancel context.CancelFunc
	if blob {
		ctx, cancel = context.WithCancel(req.Context())
	} else {
		ctx, cancel = context.WithTimeout(req.Context(), t.timeout)
	}
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel()
		// Typed, so that go-containerregistry does not retry it as a temporary error: a hung
		// registry costs one timeout per request, not three.
		var netErr net.Error
		if req.Context().Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout()) {
			return nil, &Error{Kind: KindTimeout, Err: fmt.Errorf("%s %s: no answer within %s", req.Method, safeURL(req.URL), t.timeout)}
		}
		return nil, err
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		if wait, ok := parseRetryAfter(resp.Header.Get("Retry-After"), t.now()); ok {
			t.limits.set(host, t.now().Add(wait))
		}
	}
	if !blob && resp.ContentLength > t.maxBytes {
		_ = resp.Body.Close()
		cancel()
		return nil, &Error{Kind: KindUnsupported, Err: fmt.Errorf("the answer to %s %s is %d bytes, more than the limit of %d",
			req.Method, safeURL(req.URL), resp.ContentLength, t.maxBytes)}
	}
	body := &boundedBody{rc: resp.Body, cancel: cancel, url: safeURL(req.URL)}
	if blob {
		body.idle = t.timeout
		body.timer = time.AfterFunc(t.timeout, func() { body.stalled.Store(true); cancel() })
	} else {
		body.left, body.limit = t.maxBytes, t.maxBytes
	}
	resp.Body = body
	return resp, nil
}

// safeURL is u for messages: without user information or query, where presigned storage URLs
// carry their signatures.
func safeURL(u *url.URL) string {
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// isBlobDownload reports whether req reads a blob (a layer, a config, a DB artifact): whether
// the first request of its redirect chain is GET /v2/<name>/blobs/<algorithm>:<hex>. A redirect
// keeps it one: ECR, Quay and Artifact Registry send blob downloads on to storage URLs. Decided
// from the first request only, so that neither a repository named like a blob path nor a
// redirect to one lifts the bound on other answers.
func isBlobDownload(req *http.Request) bool {
	first := req
	for hops := 0; first.Response != nil && first.Response.Request != nil && hops < 20; hops++ {
		first = first.Response.Request
	}
	return first.Method == http.MethodGet && blobPath.MatchString(first.URL.Path)
}

// blobPath is the path of a blob download; the repository name may hold slashes.
var blobPath = regexp.MustCompile(`^/v2/.+/blobs/[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`)

// parseRetryAfter reads a Retry-After header (seconds or an HTTP date), capped at maxRetryAfter.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	var wait time.Duration
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		wait = time.Duration(s) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		wait = at.Sub(now)
	} else {
		return 0, false
	}
	if wait <= 0 {
		return 0, false
	}
	return min(wait, maxRetryAfter), true
}

// rateLimits holds, per registry host, the time before which no request may be sent.
type rateLimits struct {
	mu       sync.Mutex
	notUntil map[string]time.Time
}

func (r *rateLimits) set(host string, until time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.notUntil == nil {
		r.notUntil = map[string]time.Time{}
	}
	// Bounded: entries that passed are dropped as new ones come.
	for h, t := range r.notUntil {
		if !t.After(until.Add(-maxRetryAfter)) {
			delete(r.notUntil, h)
		}
	}
	r.notUntil[host] = until
}

func (r *rateLimits) wait(host string, now time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.notUntil[host].Sub(now)
}

// boundedBody is a response body that stops a blob whose bytes stall for idle, bounds the size
// of any other answer, and releases the request's context when closed.
type boundedBody struct {
	rc     io.ReadCloser
	cancel context.CancelFunc
	url    string

	// Blobs: the idle timer, reset by every read.
	idle    time.Duration
	timer   *time.Timer
	stalled atomic.Bool

	// Other answers: bytes left of limit.
	left, limit int64
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.limit > 0 && int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	if b.timer != nil && n > 0 {
		b.timer.Reset(b.idle)
	}
	if b.limit > 0 {
		b.left -= int64(n)
		if b.left < 0 {
			return n, &Error{Kind: KindUnsupported, Err: fmt.Errorf("the answer to GET %s is more than %d bytes", b.url, b.limit)}
		}
	}
	if err != nil && b.stalled.Load() {
		return n, &Error{Kind: KindTimeout, Err: fmt.Errorf("GET %s: no byte arrived for %s", b.url, b.idle)}
	}
	return n, err
}

func (b *boundedBody) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	err := b.rc.Close()
	b.cancel()
	return err
}

// dialer returns a net.Dialer whose connection attempts end after timeout.
func dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
}
