// Package registry reaches OCI registries for ImageGuard: credentials from Kubernetes pull secrets,
// plain-HTTP and unverified-TLS hosts, tag-to-digest resolution, and errors typed by cause so that a
// report can say why a scan failed.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Kind is the cause of a registry or image error. Each is also the reason of a report's Scanned
// condition, so the names are part of the API.
type Kind string

// The kinds of error a scan can end with.
const (
	KindUnauthorized Kind = "Unauthorized"
	KindNotFound     Kind = "NotFound"
	KindTimeout      Kind = "Timeout"
	KindRateLimited  Kind = "RateLimited"
	KindUnsupported  Kind = "UnsupportedImage"
	KindUnavailable  Kind = "RegistryUnavailable"
	// KindAnalysisCrashed says analyses of the image took the controller down (killed, out of
	// memory) too often; it is not tried again before the rescan interval.
	KindAnalysisCrashed Kind = "AnalysisCrashed"
)

// Known reports whether k is one of the kinds above: a kind read from elsewhere (an analysis
// worker's answer) becomes a condition reason only if it is.
func Known(k Kind) bool {
	switch k {
	case KindUnauthorized, KindNotFound, KindTimeout, KindRateLimited, KindUnsupported, KindUnavailable, KindAnalysisCrashed:
		return true
	}
	return false
}

// Error is a registry or image error with its cause. Its message never holds credentials:
// go-containerregistry's errors name the URL (its query redacted) and the registry's own message
// only, and the query of any other URL in it (a network error of Go's HTTP client names the
// storage URL a blob download was redirected to, whose query is its signature) is cut.
type Error struct {
	Kind Kind
	Err  error
	// RetryAfter, when set, is how long the registry asked to wait before the next request
	// (Retry-After of a 429 answer).
	RetryAfter time.Duration
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Kind, redactQueries(e.Err.Error())) }

// urlQuery is the query of a URL in a message, up to the next space or quote.
var urlQuery = regexp.MustCompile(`(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'?]*)\?[^\s"']*`)

// redactQueries cuts the query of every URL in msg.
func redactQueries(msg string) string {
	if !strings.Contains(msg, "?") {
		return msg
	}
	return urlQuery.ReplaceAllString(msg, "$1?REDACTED")
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an Error of the given kind.
func Errorf(kind Kind, format string, args ...any) error {
	return &Error{Kind: kind, Err: fmt.Errorf(format, args...)}
}

// KindOf returns the kind of err, classifying errors that are not yet typed: HTTP status codes of
// registry responses, deadlines, network failures. An unknown error is KindUnavailable.
func KindOf(err error) Kind {
	var typed *Error
	if errors.As(err, &typed) {
		return typed.Kind
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return KindTimeout
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return KindTimeout
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return KindUnauthorized
		case http.StatusNotFound:
			return KindNotFound
		case http.StatusTooManyRequests:
			return KindRateLimited
		}
		for _, d := range terr.Errors {
			switch d.Code {
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return KindUnauthorized
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return KindNotFound
			case transport.TooManyRequestsErrorCode:
				return KindRateLimited
			case transport.UnsupportedErrorCode, transport.ManifestInvalidErrorCode:
				return KindUnsupported
			}
		}
	}
	return KindUnavailable
}

// RetryAfter returns how long to wait before err's request is tried again: what a registry asked
// for (Retry-After), or what is left of a crashed digest's wait.
func RetryAfter(err error) (time.Duration, bool) {
	var typed *Error
	if errors.As(err, &typed) && typed.RetryAfter > 0 {
		return typed.RetryAfter, true
	}
	return 0, false
}

// Classify wraps err in an Error of its kind; nil stays nil and typed errors stay as they are.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	var typed *Error
	if e, ok := err.(*Error); ok { //nolint:errorlint // only the outermost error needs no wrapping
		return e
	}
	if errors.As(err, &typed) {
		// Wrapped (by Go's HTTP client, say, with a URL): wrapped again, so that the message
		// of the whole is redacted.
		return &Error{Kind: typed.Kind, RetryAfter: typed.RetryAfter, Err: err}
	}
	return &Error{Kind: KindOf(err), Err: err}
}
