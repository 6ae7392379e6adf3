package registry

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// A listener that accepts connections and never answers: the registry that hung the pod
// controller for ever.
func silentListener(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	accepted := &atomic.Int32{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String(), accepted
}

func TestARegistryThatNeverAnswersTimesOut(t *testing.T) {
	host, accepted := silentListener(t)
	c := NewClient(Options{InsecureHosts: []string{host}, Timeout: 200 * time.Millisecond})
	done := make(chan error, 1)
	go func() {
		_, err := c.ResolveDigest(context.Background(), host+"/team/app:1", nil)
		done <- err
	}()
	select {
	case err := <-done:
		if KindOf(err) != KindTimeout {
			t.Fatalf("kind %s, want %s: %v", KindOf(err), KindTimeout, err)
		}
		// One timeout per scheme go-containerregistry pings an insecure host with (https, then
		// http), not its retries of a "temporary" error.
		if n := accepted.Load(); n > 2 {
			t.Errorf("%d connections, want at most 2", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the lookup never ended")
	}
}

func TestAnswersOtherThanBlobsAreBounded(t *testing.T) {
	var bodyReads atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.Contains(r.URL.Path, "/declared/"):
			// Declares 64 MiB: refused from the header, before any byte is read.
			w.Header().Set("Content-Length", "67108864")
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.WriteHeader(http.StatusOK)
		default:
			// Chunked, without a length: refused once the bound is passed.
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.WriteHeader(http.StatusOK)
			chunk := []byte(strings.Repeat(" ", 64<<10))
			for range 1024 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
				bodyReads.Add(int64(len(chunk)))
			}
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	c := NewClient(Options{InsecureHosts: []string{host}, MaxResponseBytes: 1 << 20})
	for _, repo := range []string{"declared", "chunked"} {
		ref, err := c.ParseReference(host + "/" + repo + "/app@sha256:" + strings.Repeat("a", 64))
		if err != nil {
			t.Fatal(err)
		}
		_, err = remote.Get(ref, c.RemoteOptions(context.Background(), ref, nil)...)
		if KindOf(err) != KindUnsupported || !strings.Contains(err.Error(), "the limit of 1048576") && !strings.Contains(err.Error(), "more than 1048576 bytes") {
			t.Errorf("%s: %v (kind %s), want UnsupportedImage naming the limit", repo, err, KindOf(err))
		}
	}
	// The chunked answer was read to the bound and a little beyond (what the server wrote ahead
	// into socket buffers), never whole.
	if got := bodyReads.Load(); got >= 64<<20 {
		t.Errorf("the server wrote all %d bytes: the answer was read whole", got)
	}
}

func TestAStalledBlobTimesOut(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("first bytes"))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // then nothing
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	c := NewClient(Options{InsecureHosts: []string{host}, Timeout: 200 * time.Millisecond})
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/team/app/blobs/sha256:"+strings.Repeat("b", 64), nil)
	resp, err := c.transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	_, err = io.ReadAll(resp.Body)
	if KindOf(err) != KindTimeout {
		t.Fatalf("kind %s, want %s: %v", KindOf(err), KindTimeout, err)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatal("the stalled read was not stopped")
	}
}

func TestRetryAfterHoldsRequestsToTheHost(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	c := NewClient(Options{InsecureHosts: []string{host}})
	_, err := c.ResolveDigest(context.Background(), host+"/team/app:1", nil)
	if KindOf(err) != KindRateLimited {
		t.Fatalf("kind %s, want %s: %v", KindOf(err), KindRateLimited, err)
	}
	wait, ok := RetryAfter(err)
	if !ok || wait < 110*time.Second || wait > 120*time.Second {
		t.Fatalf("RetryAfter %s %v, want about 2m", wait, ok)
	}
	sent := requests.Load()
	// Until then no request reaches the host, whatever the image.
	for i := range 5 {
		_, err := c.ResolveDigest(context.Background(), host+"/team/other:"+string(rune('a'+i)), nil)
		if KindOf(err) != KindRateLimited {
			t.Fatalf("kind %s, want %s: %v", KindOf(err), KindRateLimited, err)
		}
	}
	if got := requests.Load(); got != sent {
		t.Errorf("%d more requests reached the host during its Retry-After", got-sent)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"30": 30 * time.Second, "0": 0, "-5": 0, "junk": 0, "999999": maxRetryAfter,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
	} {
		got, _ := parseRetryAfter(v, now)
		if got != want {
			t.Errorf("%q: %s, want %s", v, got, want)
		}
	}
}

// A blob download redirected to storage whose connection then fails: Go's HTTP client names the
// storage URL in its error, and that URL's query is the download's signature. go-containerregistry
// masks the query's values; the message keeps none of it.
func TestAFailedRedirectedDownloadHidesItsSignature(t *testing.T) {
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close() // no answer at all
		}
	}))
	t.Cleanup(storage.Close)
	reg := gcrregistry.New(gcrregistry.Logger(log.New(io.Discard, "", 0)))
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && blobPath.MatchString(r.URL.Path) {
			http.Redirect(w, r, storage.URL+"/bucket/blob?X-Amz-Credential=AKIASECRET&X-Amz-Signature=s3cr3t", http.StatusTemporaryRedirect)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	host := strings.TrimPrefix(front.URL, "http://")
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(Options{InsecureHosts: []string{host}, Timeout: 5 * time.Second})
	ref, err := c.ParseReference(host + "/team/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, c.RemoteOptions(context.Background(), ref, nil)...); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := remote.Layer(ref.Context().Digest(d.String()), c.RemoteOptions(context.Background(), ref, nil)...)
	if err == nil {
		var rc io.ReadCloser
		if rc, err = layer.Compressed(); err == nil {
			_, err = io.ReadAll(rc)
			_ = rc.Close()
		}
	}
	if err == nil {
		t.Fatal("the download succeeded")
	}
	msg := Classify(err).Error()
	if strings.Contains(msg, "s3cr3t") || strings.Contains(msg, "AKIASECRET") {
		t.Fatalf("the message holds the signed query: %s", msg)
	}
	if !strings.Contains(msg, "/bucket/blob?REDACTED") {
		t.Errorf("the message no longer names the storage URL: %s", msg)
	}
}
