package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestKindOf(t *testing.T) {
	tests := map[string]struct {
		err  error
		want Kind
	}{
		"401":                   {err: &transport.Error{StatusCode: http.StatusUnauthorized}, want: KindUnauthorized},
		"403":                   {err: &transport.Error{StatusCode: http.StatusForbidden}, want: KindUnauthorized},
		"404":                   {err: fmt.Errorf("wrapped: %w", &transport.Error{StatusCode: http.StatusNotFound}), want: KindNotFound},
		"429":                   {err: &transport.Error{StatusCode: http.StatusTooManyRequests}, want: KindRateLimited},
		"MANIFEST_UNKNOWN body": {err: &transport.Error{StatusCode: 400, Errors: []transport.Diagnostic{{Code: transport.ManifestUnknownErrorCode}}}, want: KindNotFound},
		"DENIED body":           {err: &transport.Error{StatusCode: 400, Errors: []transport.Diagnostic{{Code: transport.DeniedErrorCode}}}, want: KindUnauthorized},
		"a deadline":            {err: fmt.Errorf("get: %w", context.DeadlineExceeded), want: KindTimeout},
		"a network timeout":     {err: timeoutErr{}, want: KindTimeout},
		"a typed error":         {err: Errorf(KindUnsupported, "too big"), want: KindUnsupported},
		"a 500":                 {err: &transport.Error{StatusCode: http.StatusInternalServerError}, want: KindUnavailable},
		"anything else":         {err: errors.New("connection refused"), want: KindUnavailable},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(KindOf(tt.err)).To(Equal(tt.want))
			classified := Classify(tt.err)
			g.Expect(KindOf(classified)).To(Equal(tt.want))
			g.Expect(errors.Is(classified, tt.err)).To(BeTrue())
		})
	}
	NewWithT(t).Expect(Classify(nil)).To(BeNil())
}

func TestKeychainFromSecrets(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	kc, err := KeychainFromSecrets(ctx, []corev1.Secret{{Type: corev1.SecretTypeOpaque}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(kc).NotTo(BeNil())

	_, err = KeychainFromSecrets(ctx, []corev1.Secret{{
		Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths": {"r.example.com": {"password": "hunter2"`)},
	}})
	g.Expect(err).To(MatchError(ContainSubstring("malformed docker config")))
	g.Expect(err.Error()).NotTo(ContainSubstring("hunter2"))
}

func TestParseReference(t *testing.T) {
	g := NewWithT(t)
	c := NewClient(Options{InsecureHosts: []string{"registry.internal:5000"}})
	ref, err := c.ParseReference("registry.internal:5000/app:1")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ref.Context().Scheme()).To(Equal("http"))
	ref, err = c.ParseReference("registry.example.com/app:1")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ref.Context().Scheme()).To(Equal("https"))
	_, err = c.ParseReference("Bad Ref")
	g.Expect(KindOf(err)).To(Equal(KindUnsupported))
	g.Expect(c.Platform().Architecture).To(Equal("amd64"))
}
