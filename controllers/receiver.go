package controllers

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/registryscan"
)

// ReceiverPath is where registry notifications are taken: ReceiverPath<namespace>/<name>.
const ReceiverPath = "/hooks/registry/"

// Bounds of the receiver.
const (
	// maxNotificationBytes bounds a notification's body.
	maxNotificationBytes = 1 << 20
	// receiverRequestsPerSecond paces the requests to each scan's path, authenticated or not (a
	// burst of twice as many): a flood of one path holds no other scan's notifications. A token is
	// read at most once per tokenTTL, so requests cost no API call beyond that.
	receiverRequestsPerSecond = 5
	// maxPacedScans bounds the paths paced at once (paths of scans that do not exist count too).
	maxPacedScans = 4096
	// tokenTTL is how long a scan's token is kept after it was read: a Secret changed takes that
	// long to count.
	tokenTTL = 30 * time.Second
	// maxKeptTokens bounds the tokens kept.
	maxKeptTokens = 1024
)

// RegistryReceiver takes a registry's push notifications (the Distribution registry's
// notification format and Harbor's webhook) at /hooks/registry/<namespace>/<name>, authenticated
// with the token of the Secret the RegistryScan names (Flux's notification Receiver is the
// model). A notification that concerns a repository of the scan asks for a listing now: it sets
// the scan's RequestedAtAnnotation, so that any replica can take notifications while the leader
// lists. A malformed, unauthenticated or unrelated notification changes nothing.
type RegistryReceiver struct {
	// Client reads scans (cached) and patches their annotation.
	Client client.Client
	// APIReader reads the token Secrets by name, uncached.
	APIReader client.Reader
	// Address is where it listens (host:port).
	Address string
	Log     logr.Logger
	Clock   clock.PassiveClock

	once   sync.Once
	limits map[types.NamespacedName]*rate.Limiter
	mu     sync.Mutex
	tokens map[tokenKey]keptToken
}

type tokenKey struct {
	scan   types.NamespacedName
	secret string
}

type keptToken struct {
	token []byte
	at    time.Time
}

func (rr *RegistryReceiver) init() {
	rr.once.Do(func() {
		if rr.Clock == nil {
			rr.Clock = clock.RealClock{}
		}
		rr.limits = map[types.NamespacedName]*rate.Limiter{}
		rr.tokens = map[tokenKey]keptToken{}
	})
}

// NeedLeaderElection is false: every replica takes notifications.
func (rr *RegistryReceiver) NeedLeaderElection() bool { return false }

// Start serves until ctx ends.
func (rr *RegistryReceiver) Start(ctx context.Context) error {
	rr.init()
	ln, err := net.Listen("tcp", rr.Address)
	if err != nil {
		return fmt.Errorf("receiver: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(ReceiverPath, rr)
	srv := &http.Server{
		Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 15 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	rr.Log.Info("Serving registry notifications", "address", ln.Addr().String(), "path", ReceiverPath+"<namespace>/<name>")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// receiverError is an answer other than success.
type receiverError struct {
	code int
	msg  string
}

func (e *receiverError) Error() string { return e.msg }

func refuse(code int, format string, args ...any) error {
	return &receiverError{code: code, msg: fmt.Sprintf(format, args...)}
}

// ServeHTTP answers one notification.
func (rr *RegistryReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	rr.init()
	code, msg := http.StatusAccepted, ""
	var err error
	msg, err = rr.receive(req, w)
	if err != nil {
		var re *receiverError
		if errors.As(err, &re) {
			code, msg = re.code, re.msg
		} else {
			// The cause is logged, not answered: it may name a Secret or the API server's error.
			rr.Log.Error(err, "Cannot take a registry notification", "path", req.URL.Path)
			code, msg = http.StatusServiceUnavailable, "cannot take the notification now; try again"
		}
	}
	if code == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
	if code >= 400 {
		rr.Log.V(1).Info("Refused a registry notification", "path", req.URL.Path, "code", code, "reason", msg)
	}
}

// receive authenticates and reads a notification, and asks the scan for a listing when it
// concerns one of its repositories; it returns what to answer.
func (rr *RegistryReceiver) receive(req *http.Request, w http.ResponseWriter) (string, error) {
	if req.Method != http.MethodPost {
		return "", refuse(http.StatusMethodNotAllowed, "only POST")
	}
	key, ok := scanKey(req.URL.Path)
	if !ok {
		return "", refuse(http.StatusNotFound, "the path is %s<namespace>/<name>", ReceiverPath)
	}
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	scan := &securityv1alpha1.RegistryScan{}
	if err := rr.Client.Get(ctx, key, scan); err != nil { // the cache: no API request
		if apierrors.IsNotFound(err) {
			// The same answer as a wrong token: the receiver tells no one which scans exist.
			return "", refuse(http.StatusUnauthorized, "unknown scan or wrong token")
		}
		return "", err
	}
	// Paced per scan that exists: paths of no scan fill no limiter.
	if !rr.allow(key) {
		return "", refuse(http.StatusTooManyRequests, "too many notifications")
	}
	if err := rr.authenticate(ctx, scan, req.Header.Get("Authorization")); err != nil {
		return "", err
	}
	body, err := readBody(w, req)
	if err != nil {
		return "", err
	}
	pushed, err := parseNotification(body)
	if err != nil {
		return "", err
	}
	var matched []string
	for _, p := range pushed {
		if covers(scan.Spec.Repositories, p) {
			matched = append(matched, p)
		}
	}
	if len(matched) == 0 {
		return "no push of a repository this scan lists: nothing to do", nil
	}
	if scan.Spec.Suspend {
		return "the scan is suspended: nothing to do", nil
	}
	// A new value each time, even while a listing runs: that listing may have read the tags
	// before this push. Requests that come together are one more listing (the work queue).
	before := scan.DeepCopy()
	metav1.SetMetaDataAnnotation(&scan.ObjectMeta, securityv1alpha1.RequestedAtAnnotation, rr.Clock.Now().UTC().Format(time.RFC3339Nano))
	if err := rr.Client.Patch(ctx, scan, client.MergeFrom(before)); err != nil {
		if apierrors.IsNotFound(err) {
			return "", refuse(http.StatusUnauthorized, "unknown scan or wrong token")
		}
		return "", err
	}
	rr.Log.Info("A registry notified a push: listing the scan now", "scan", key.String(), "repositories", matched)
	return fmt.Sprintf("listing %s now", key.Name), nil
}

// allow reports whether a request to key's path fits its pace.
func (rr *RegistryReceiver) allow(key types.NamespacedName) bool {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	lim := rr.limits[key]
	if lim == nil {
		if len(rr.limits) >= maxPacedScans {
			// Full: the limiters that are full of tokens again pace nothing; drop them.
			for k, l := range rr.limits {
				if l.Tokens() >= float64(l.Burst()) {
					delete(rr.limits, k)
				}
			}
			if len(rr.limits) >= maxPacedScans {
				return false
			}
		}
		lim = rate.NewLimiter(receiverRequestsPerSecond, 2*receiverRequestsPerSecond)
		rr.limits[key] = lim
	}
	return lim.Allow()
}

// scanKey reads <namespace>/<name> from a receiver path.
func scanKey(path string) (types.NamespacedName, bool) {
	rest, ok := strings.CutPrefix(path, ReceiverPath)
	if !ok {
		return types.NamespacedName{}, false
	}
	ns, name, ok := strings.Cut(rest, "/")
	if !ok || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: ns, Name: name}, true
}

// authenticate checks header against the token of the scan's receiver Secret.
func (rr *RegistryReceiver) authenticate(ctx context.Context, scan *securityv1alpha1.RegistryScan, header string) error {
	if scan.Spec.Receiver == nil {
		return refuse(http.StatusUnauthorized, "unknown scan or wrong token")
	}
	token, err := rr.token(ctx, scan)
	if err != nil {
		return err
	}
	given := []byte(strings.TrimSpace(header))
	if b, ok := strings.CutPrefix(string(given), "Bearer "); ok {
		given = []byte(strings.TrimSpace(b))
	}
	if len(token) == 0 || subtle.ConstantTimeCompare(given, token) != 1 {
		return refuse(http.StatusUnauthorized, "unknown scan or wrong token")
	}
	return nil
}

// token returns the token of the scan's receiver Secret, read at most once per tokenTTL.
func (rr *RegistryReceiver) token(ctx context.Context, scan *securityv1alpha1.RegistryScan) ([]byte, error) {
	key := tokenKey{scan: types.NamespacedName{Namespace: scan.Namespace, Name: scan.Name}, secret: scan.Spec.Receiver.SecretRef.Name}
	now := rr.Clock.Now()
	rr.mu.Lock()
	kept, ok := rr.tokens[key]
	rr.mu.Unlock()
	if ok && now.Sub(kept.at) < tokenTTL {
		return kept.token, nil
	}
	secret := &corev1.Secret{}
	err := rr.APIReader.Get(ctx, client.ObjectKey{Namespace: scan.Namespace, Name: key.secret}, secret)
	switch {
	case apierrors.IsNotFound(err):
		secret.Data = nil // no token: nothing authenticates
	case err != nil:
		return nil, fmt.Errorf("reading the receiver's Secret: %w", err)
	case secret.Type == corev1.SecretTypeServiceAccountToken:
		// Its "token" is a credential of the cluster, not one made for the receiver.
		secret.Data = nil
	}
	token := []byte(strings.TrimSpace(string(secret.Data["token"])))
	rr.mu.Lock()
	if len(rr.tokens) >= maxKeptTokens {
		for k, t := range rr.tokens {
			if now.Sub(t.at) >= tokenTTL {
				delete(rr.tokens, k)
			}
		}
		if len(rr.tokens) >= maxKeptTokens {
			clear(rr.tokens)
		}
	}
	rr.tokens[key] = keptToken{token: token, at: now}
	rr.mu.Unlock()
	return token, nil
}

func readBody(w http.ResponseWriter, req *http.Request) ([]byte, error) {
	if req.ContentLength > maxNotificationBytes {
		return nil, refuse(http.StatusRequestEntityTooLarge, "a notification is at most %d bytes", maxNotificationBytes)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxNotificationBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, refuse(http.StatusRequestEntityTooLarge, "a notification is at most %d bytes", maxNotificationBytes)
		}
		return nil, refuse(http.StatusBadRequest, "reading the body: %v", err)
	}
	return body, nil
}

// distributionNotification is the Distribution registry's envelope
// (application/vnd.docker.distribution.events.v1+json).
type distributionNotification struct {
	Events []struct {
		Action string `json:"action"`
		Target struct {
			Repository string `json:"repository"`
		} `json:"target"`
	} `json:"events"`
}

// harborWebhook is Harbor's webhook payload (its "Default" format).
type harborWebhook struct {
	Type      string `json:"type"`
	EventData *struct {
		Repository struct {
			RepoFullName string `json:"repo_full_name"`
		} `json:"repository"`
	} `json:"event_data"`
}

// maxNotificationEvents bounds the events of one notification that are looked at.
const maxNotificationEvents = 256

// parseNotification returns the repositories (their paths in the registry) a Distribution
// notification or a Harbor webhook says were pushed to; any other body is an error.
func parseNotification(body []byte) ([]string, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil {
		return nil, refuse(http.StatusBadRequest, "the body is not a JSON object: %v", err)
	}
	_, isDistribution := probe["events"]
	_, isHarbor := probe["event_data"]
	var out []string
	switch {
	case isDistribution:
		var n distributionNotification
		if err := json.Unmarshal(body, &n); err != nil {
			return nil, refuse(http.StatusBadRequest, "not a Distribution notification: %v", err)
		}
		if len(n.Events) > maxNotificationEvents {
			return nil, refuse(http.StatusRequestEntityTooLarge, "more than %d events", maxNotificationEvents)
		}
		for _, e := range n.Events {
			if e.Target.Repository == "" {
				return nil, refuse(http.StatusBadRequest, "an event names no target.repository")
			}
			if e.Action != "push" {
				continue
			}
			out = append(out, e.Target.Repository)
		}
	case isHarbor:
		var h harborWebhook
		if err := json.Unmarshal(body, &h); err != nil || h.EventData == nil || h.Type == "" {
			return nil, refuse(http.StatusBadRequest, "not a Harbor webhook (type and event_data)")
		}
		if h.Type != "PUSH_ARTIFACT" && h.Type != "pushImage" {
			return nil, nil
		}
		repo := h.EventData.Repository.RepoFullName
		if repo == "" {
			return nil, refuse(http.StatusBadRequest, "a Harbor push names no event_data.repository.repo_full_name")
		}
		out = append(out, repo)
	default:
		return nil, refuse(http.StatusBadRequest, "neither a Distribution notification (events) nor a Harbor webhook (type, event_data)")
	}
	return out, nil
}

// covers reports whether one of a scan's repositories is the repository path repo, or a prefix
// of it (registryscan.Entry.CoversPath: the path only); a listing asked for in vain costs one
// listing.
func covers(entries []string, repo string) bool {
	for _, entry := range entries {
		if e, err := registryscan.ParseEntry(entry); err == nil && e.CoversPath(repo) {
			return true
		}
	}
	return false
}
