// Package webhookcert keeps the admission webhook's TLS material without cert-manager: a CA and a
// serving certificate in one Secret, created on first start, renewed before they expire, written
// to the folder the webhook server reads (it reloads them on change), and the CA bundle injected
// into ImageGuard's ValidatingWebhookConfigurations. Every replica runs it; the Secret's
// resourceVersion makes concurrent renewals safe.
package webhookcert

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Keys of the Secret; tls.crt and tls.key are those of a kubernetes.io/tls Secret.
const (
	KeyCert     = corev1.TLSCertKey
	KeyKey      = corev1.TLSPrivateKeyKey
	KeyCABundle = "ca.crt"
	KeyCAKey    = "ca.key"
)

// Options configure the certificate keeper.
type Options struct {
	// Client reads and writes the Secret and the webhook configurations; it must not be the
	// manager's cached client (that would watch every Secret of the cluster).
	Client client.Client
	Log    logr.Logger
	// Namespace and SecretName locate the Secret.
	Namespace, SecretName string
	// Hosts are the DNS names (and IP addresses) the serving certificate is valid for, e.g. the
	// webhook Service's names.
	Hosts []string
	// CertDir receives tls.crt, tls.key and ca.crt.
	CertDir string
	// WebhookConfigurations are the ValidatingWebhookConfigurations whose caBundle is kept.
	WebhookConfigurations []string
	// CAValidity and CertValidity are the lifetimes of new certificates (default 10 and 1 years).
	CAValidity, CertValidity time.Duration
	// CheckInterval is how often the Secret and the configurations are checked (default 1m).
	CheckInterval time.Duration
	// Clock is the time certificates are issued and renewed at; nil is the real clock.
	Clock clock.PassiveClock
}

// Keeper creates, renews and distributes the webhook's certificates.
type Keeper struct {
	opts Options
}

// New returns a keeper of opts.
func New(opts Options) (*Keeper, error) {
	if opts.Client == nil || opts.Namespace == "" || opts.SecretName == "" || opts.CertDir == "" || len(opts.Hosts) == 0 {
		return nil, errors.New("webhook certificates: a client, the Secret's namespace and name, the certificate folder and at least one host are required")
	}
	if opts.CAValidity == 0 {
		opts.CAValidity = 10 * 365 * 24 * time.Hour
	}
	if opts.CertValidity == 0 {
		opts.CertValidity = 365 * 24 * time.Hour
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = time.Minute
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	return &Keeper{opts: opts}, nil
}

// NewSecretData issues a new CA and a serving certificate for hosts, as the keeper stores them
// (KeyCert, KeyKey, KeyCABundle, KeyCAKey): for tests and for tools that write a Secret ahead.
func NewSecretData(hosts []string, now time.Time) (map[string][]byte, error) {
	k := &Keeper{opts: Options{Hosts: hosts, CAValidity: 10 * 365 * 24 * time.Hour, CertValidity: 365 * 24 * time.Hour, Clock: clocktesting.NewFakePassiveClock(now)}}
	secret := &corev1.Secret{}
	if err := k.renew(secret, true); err != nil {
		return nil, err
	}
	return secret.Data, nil
}

// NeedLeaderElection is false: every replica serves the webhook and needs the files.
func (k *Keeper) NeedLeaderElection() bool { return false }

// Start keeps the certificates current until ctx ends. Failures are logged and retried at the
// next check: the files already written keep serving.
func (k *Keeper) Start(ctx context.Context) error {
	t := time.NewTicker(k.opts.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := k.Ensure(ctx); err != nil {
				k.opts.Log.Error(err, "Cannot keep the webhook certificates current")
			}
		}
	}
}

// Ensure makes the Secret hold a valid CA and serving certificate (creating or renewing them),
// writes them to CertDir and injects the CA bundle. Run it once before the webhook server starts.
func (k *Keeper) Ensure(ctx context.Context) error {
	var secret *corev1.Secret
	var err error
	for attempt := 0; ; attempt++ {
		secret, err = k.ensureSecret(ctx)
		if err == nil || attempt == 2 || (!apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err)) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("webhook certificate Secret %s/%s: %w", k.opts.Namespace, k.opts.SecretName, err)
	}
	if err := k.writeFiles(secret); err != nil {
		return fmt.Errorf("writing the webhook certificates to %s: %w", k.opts.CertDir, err)
	}
	return k.inject(ctx, secret.Data[KeyCABundle])
}

// renewAt is when a certificate valid from notBefore to notAfter is renewed: with a third of its
// life left.
func renewAt(c *x509.Certificate) time.Time {
	return c.NotAfter.Add(-c.NotAfter.Sub(c.NotBefore) / 3)
}

func (k *Keeper) ensureSecret(ctx context.Context) (*corev1.Secret, error) {
	secret := &corev1.Secret{}
	key := client.ObjectKey{Namespace: k.opts.Namespace, Name: k.opts.SecretName}
	err := k.opts.Client.Get(ctx, key, secret)
	if apierrors.IsNotFound(err) {
		secret = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: k.opts.Namespace, Name: k.opts.SecretName,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "imageguard"}},
			Type: corev1.SecretTypeTLS,
		}
		if err := k.renew(secret, true); err != nil {
			return nil, err
		}
		k.opts.Log.Info("Created the webhook certificates", "secret", key.String())
		return secret, k.opts.Client.Create(ctx, secret)
	}
	if err != nil {
		return nil, err
	}
	now := k.opts.Clock.Now()
	ca, _, caErr := parsePair(secret.Data[KeyCABundle], secret.Data[KeyCAKey])
	newCA := caErr != nil || !now.Before(renewAt(ca))
	var newCert bool
	if !newCA {
		cert, _, err := parsePair(secret.Data[KeyCert], secret.Data[KeyKey])
		newCert = err != nil || !now.Before(renewAt(cert)) || cert.CheckSignatureFrom(ca) != nil || !k.covers(cert)
	}
	if !newCA && !newCert {
		return secret, nil
	}
	if err := k.renew(secret, newCA); err != nil {
		return nil, err
	}
	k.opts.Log.Info("Renewed the webhook certificates", "secret", key.String(), "newCA", newCA)
	return secret, k.opts.Client.Update(ctx, secret)
}

// covers reports whether cert names every host.
func (k *Keeper) covers(cert *x509.Certificate) bool {
	for _, h := range k.opts.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
				return false
			}
		} else if !slices.Contains(cert.DNSNames, h) {
			return false
		}
	}
	return true
}

// renew issues a new serving certificate into secret, with a new CA when newCA. A new CA's
// bundle keeps the previous CA while it is valid, so clients that still hold the old bundle
// trust both until the injection reaches them.
func (k *Keeper) renew(secret *corev1.Secret, newCA bool) error {
	now := k.opts.Clock.Now()
	if secret.Data == nil {
		secret.Data = map[string][]byte{}
	}
	var ca *x509.Certificate
	var caKey crypto.Signer
	var err error
	if newCA {
		caKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(), Subject: pkix.Name{CommonName: "imageguard-webhook-ca"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(k.opts.CAValidity),
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
		if err != nil {
			return err
		}
		if ca, err = x509.ParseCertificate(der); err != nil {
			return err
		}
		bundle := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		for _, old := range parseCerts(secret.Data[KeyCABundle]) {
			if now.Before(old.NotAfter) {
				bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: old.Raw})...)
			}
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
		if err != nil {
			return err
		}
		secret.Data[KeyCABundle] = bundle
		secret.Data[KeyCAKey] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	} else if ca, caKey, err = parsePair(secret.Data[KeyCABundle], secret.Data[KeyCAKey]); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: k.opts.Hosts[0]},
		NotBefore: now.Add(-time.Hour), NotAfter: minTime(now.Add(k.opts.CertValidity), ca.NotAfter),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range k.opts.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	secret.Data[KeyCert] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	secret.Data[KeyKey] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return nil
}

// parsePair returns the first certificate of certPEM and the key of keyPEM, checking they match.
func parsePair(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	certs := parseCerts(certPEM)
	if len(certs) == 0 {
		return nil, nil, errors.New("no certificate")
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, errors.New("no private key")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("the private key cannot sign")
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(certs[0].PublicKey) {
		return nil, nil, errors.New("the private key does not match the certificate")
	}
	return certs[0], key, nil
}

func parseCerts(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return out
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// writeFiles writes the Secret's certificates into CertDir where they differ, each atomically.
func (k *Keeper) writeFiles(secret *corev1.Secret) error {
	if err := os.MkdirAll(k.opts.CertDir, 0o700); err != nil {
		return err
	}
	// The key first: the server reloads on the certificate's change and needs its key by then.
	for _, name := range []string{KeyKey, KeyCert, KeyCABundle} {
		path := filepath.Join(k.opts.CertDir, name)
		if current, err := os.ReadFile(path); err == nil && bytes.Equal(current, secret.Data[name]) {
			continue
		}
		tmp, err := os.CreateTemp(k.opts.CertDir, "."+name+"-*")
		if err != nil {
			return err
		}
		_, werr := tmp.Write(secret.Data[name])
		cerr := tmp.Close()
		if err := errors.Join(werr, cerr); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			os.Remove(tmp.Name())
			return err
		}
	}
	return nil
}

// injectInto sets bundle as the caBundle of every webhook of the configuration name.
func (k *Keeper) injectInto(ctx context.Context, name string, bundle []byte) error {
	cfg := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := k.opts.Client.Get(ctx, client.ObjectKey{Name: name}, cfg); err != nil {
		if apierrors.IsNotFound(err) {
			k.opts.Log.V(1).Info("No webhook configuration to inject the CA into", "name", name)
			return nil
		}
		return err
	}
	base := cfg.DeepCopy()
	changed := false
	for i := range cfg.Webhooks {
		if !bytes.Equal(cfg.Webhooks[i].ClientConfig.CABundle, bundle) {
			cfg.Webhooks[i].ClientConfig.CABundle = bundle
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if err := k.opts.Client.Patch(ctx, cfg, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return err
	}
	k.opts.Log.Info("Injected the webhook CA bundle", "validatingWebhookConfiguration", name)
	return nil
}

// inject sets bundle as the caBundle of every webhook of the configurations.
func (k *Keeper) inject(ctx context.Context, bundle []byte) error {
	var errs []error
	for _, name := range k.opts.WebhookConfigurations {
		// Replicas inject at once on start: a conflict means another one just wrote; look again.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error { return k.injectInto(ctx, name, bundle) })
		if err != nil {
			errs = append(errs, fmt.Errorf("injecting the CA bundle into %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
