package webhookcert_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/imageguard/imageguard/internal/testenv"
	"github.com/imageguard/imageguard/internal/webhookcert"
)

const ns = "imageguard"

// verify checks that the serving certificate in dir is valid for host at now under the CA bundle
// in dir, and returns the certificate.
func verify(g Gomega, dir, host string, now time.Time) *x509.Certificate {
	bundle, err := os.ReadFile(filepath.Join(dir, webhookcert.KeyCABundle))
	g.Expect(err).NotTo(HaveOccurred())
	certPEM, err := os.ReadFile(filepath.Join(dir, webhookcert.KeyCert))
	g.Expect(err).NotTo(HaveOccurred())
	roots := x509.NewCertPool()
	g.Expect(roots.AppendCertsFromPEM(bundle)).To(BeTrue())
	certs := parse(g, certPEM)
	_, err = certs[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, CurrentTime: now})
	g.Expect(err).NotTo(HaveOccurred())
	return certs[0]
}

func parse(g Gomega, data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for len(data) > 0 {
		certs, err := x509.ParseCertificates(pemBlock(&data))
		if err != nil || certs == nil {
			break
		}
		out = append(out, certs...)
	}
	g.Expect(out).NotTo(BeEmpty())
	return out
}

func TestKeeperCreatesRenewsAndInjects(t *testing.T) {
	g := NewWithT(t)
	env, err := testenv.Start(testenv.Options{NoCRDs: true})
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = env.Stop() }()
	ctx := context.Background()
	c := env.Client
	g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "imageguard"},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    "pods.imageguard.dev",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://127.0.0.1:1/validate-workloads")},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{"CREATE"}, Rule: admissionregistrationv1.Rule{APIGroups: []string{"example.com"}, APIVersions: []string{"v1"}, Resources: []string{"widgets"}}}},
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			FailurePolicy:           ptr.To(admissionregistrationv1.Ignore),
		}},
	}
	g.Expect(c.Create(ctx, vwc)).To(Succeed())

	now := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(now)
	dir := t.TempDir()
	host := "imageguard-webhook.imageguard.svc"
	keeper := func(hosts ...string) *webhookcert.Keeper {
		k, err := webhookcert.New(webhookcert.Options{
			Client: c, Log: logr.Discard(), Namespace: ns, SecretName: "imageguard-webhook-tls",
			Hosts: hosts, CertDir: dir, WebhookConfigurations: []string{"imageguard", "not-installed"},
			Clock: clk,
		})
		g.Expect(err).NotTo(HaveOccurred())
		return k
	}
	secret := func() *corev1.Secret {
		s := &corev1.Secret{}
		g.Expect(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "imageguard-webhook-tls"}, s)).To(Succeed())
		return s
	}
	caBundle := func() []byte {
		g.Expect(c.Get(ctx, client.ObjectKeyFromObject(vwc), vwc)).To(Succeed())
		return vwc.Webhooks[0].ClientConfig.CABundle
	}

	// First start, by two replicas at once: one Secret, both serve it.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = keeper(host, "127.0.0.1").Ensure(ctx) })
	}
	wg.Wait()
	g.Expect(errs).To(HaveEach(Succeed()))
	first := secret()
	g.Expect(first.Type).To(Equal(corev1.SecretTypeTLS))
	g.Expect(first.Data).To(HaveKey(webhookcert.KeyCAKey))
	cert := verify(g, dir, host, now)
	g.Expect(cert.IPAddresses).To(HaveLen(1))
	g.Expect(caBundle()).To(Equal(first.Data[webhookcert.KeyCABundle]))

	// Nothing to do: no write.
	g.Expect(keeper(host, "127.0.0.1").Ensure(ctx)).To(Succeed())
	g.Expect(secret().ResourceVersion).To(Equal(first.ResourceVersion))

	// Nine months on (a 1-year certificate is renewed with a third of its life left): a new
	// serving certificate from the same CA.
	now = now.AddDate(0, 9, 0)
	clk.SetTime(now)
	g.Expect(keeper(host, "127.0.0.1").Ensure(ctx)).To(Succeed())
	renewed := verify(g, dir, host, now)
	g.Expect(renewed.SerialNumber).NotTo(Equal(cert.SerialNumber))
	g.Expect(secret().Data[webhookcert.KeyCABundle]).To(Equal(first.Data[webhookcert.KeyCABundle]))

	// A new host name: a certificate that covers it.
	g.Expect(keeper(host, "127.0.0.1", "imageguard-webhook.imageguard.svc.cluster.local").Ensure(ctx)).To(Succeed())
	verify(g, dir, "imageguard-webhook.imageguard.svc.cluster.local", now)

	// A broken key in the Secret: healed.
	s := secret()
	s.Data[webhookcert.KeyKey] = []byte("not a key")
	g.Expect(c.Update(ctx, s)).To(Succeed())
	g.Expect(keeper(host).Ensure(ctx)).To(Succeed())
	verify(g, dir, host, now)

	// Seven years on (a 10-year CA is renewed with a third left): a new CA whose bundle keeps the
	// old one, injected into the webhook configuration.
	now = now.AddDate(7, 0, 0)
	clk.SetTime(now)
	g.Expect(keeper(host).Ensure(ctx)).To(Succeed())
	verify(g, dir, host, now)
	bundle := secret().Data[webhookcert.KeyCABundle]
	g.Expect(parse(g, bundle)).To(HaveLen(2))
	g.Expect(caBundle()).To(Equal(bundle))

	// A configuration reinstalled without a caBundle (helm upgrade) gets it back.
	vwc.Webhooks[0].ClientConfig.CABundle = nil
	g.Expect(c.Update(ctx, vwc)).To(Succeed())
	g.Expect(keeper(host).Ensure(ctx)).To(Succeed())
	g.Expect(caBundle()).To(Equal(bundle))
}

// pemBlock returns the DER bytes of the first PEM block of *data and advances past it.
func pemBlock(data *[]byte) []byte {
	block, rest := pem.Decode(*data)
	*data = rest
	if block == nil {
		*data = nil
		return nil
	}
	return block.Bytes
}
