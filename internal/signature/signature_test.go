package signature

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	. "github.com/onsi/gomega"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/testutil"
)

const (
	issuer  = "https://oidc.example.com"
	subject = "release@example.com"
)

// world is a registry with images signed in every form, and the trust material to check them.
type world struct {
	reg      *testutil.Registry
	client   *registry.Client
	key      *testutil.SigningKey
	other    *testutil.SigningKey
	sigstore *ca.VirtualSigstore
	// trustRoot is the test Sigstore's trusted_root.json (no CT log: its certificates carry no SCT).
	trustRoot []byte
	images    map[string]v1.Descriptor
}

func newWorld(t *testing.T, opts ...testutil.RegistryOption) *world {
	t.Helper()
	w := &world{reg: testutil.NewRegistry(t, opts...), key: testutil.NewSigningKey(t), other: testutil.NewSigningKey(t), images: map[string]v1.Descriptor{}}
	w.client = registry.NewClient(registry.Options{InsecureHosts: []string{w.reg.Host()}, Timeout: 5 * time.Second})
	var err error
	if w.sigstore, err = ca.NewVirtualSigstore(); err != nil {
		t.Fatal(err)
	}
	w.trustRoot = testutil.TrustRootJSON(t, w.sigstore)
	return w
}

// image pushes a distinct image as repo:tag and returns its descriptor.
func (w *world) image(t *testing.T, repo string) v1.Descriptor {
	t.Helper()
	layer, err := testutil.LayerFromFiles(map[string][]byte{"etc/" + repo: []byte(repo)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: "amd64"}, layer)
	if err != nil {
		t.Fatal(err)
	}
	_, d := w.reg.Push(t, repo, "v1", img)
	size, _ := img.Size()
	mt, _ := img.MediaType()
	desc := v1.Descriptor{Digest: d, Size: size, MediaType: mt}
	w.images[repo] = desc
	return desc
}

func (w *world) repo(name string) string { return w.reg.Host() + "/" + name }

// expiredCertBundle is a DSSE signature of statement by a certificate of a CA of its own that
// expired an hour ago, with no timestamp and no log entry; it returns the CA's trust root too.
func expiredCertBundle(t *testing.T, identity, oidcIssuer string, statement []byte) ([]byte, []byte) {
	t.Helper()
	rootCert, rootKey, err := ca.GenerateRootCa()
	if err != nil {
		t.Fatal(err)
	}
	inter, interKey, err := ca.GenerateFulcioIntermediate(rootCert, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf, err := ca.GenerateLeafCert(identity, oidcIssuer, time.Now().Add(-time.Hour), leafKey, inter, interKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := signature.LoadECDSASignerVerifier(leafKey, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	env, err := dsse.WrapSigner(s, "application/vnd.in-toto+json").SignMessage(strings.NewReader(string(statement)))
	if err != nil {
		t.Fatal(err)
	}
	var e struct {
		PayloadType string `json:"payloadType"`
		Payload     []byte `json:"payload"`
		Signatures  []struct {
			Sig []byte `json:"sig"`
		} `json:"signatures"`
	}
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	b := &protobundle.Bundle{
		MediaType: testutil.BundleMediaType,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content: &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: leaf.Raw}},
		},
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{
			Payload: e.Payload, PayloadType: e.PayloadType, Signatures: []*protodsse.Signature{{Sig: e.Signatures[0].Sig}},
		}},
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, []root.CertificateAuthority{&root.FulcioCertificateAuthority{
		Root: rootCert, Intermediates: []*x509.Certificate{inter}, ValidityPeriodStart: time.Now().Add(-2 * time.Hour), ValidityPeriodEnd: time.Now().Add(time.Hour),
	}}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return testutil.BundleJSON(t, b), data
}

func authorities(t *testing.T, rule securityv1alpha1.SignatureRule) *policy.SignatureAuthorities {
	t.Helper()
	rule.Required = true
	p, err := policy.Compile(securityv1alpha1.PolicyRules{Signatures: &rule})
	if err != nil {
		t.Fatal(err)
	}
	return p.Signatures()
}

func keyRule(pems ...string) securityv1alpha1.SignatureRule {
	r := securityv1alpha1.SignatureRule{}
	for _, p := range pems {
		r.Keys = append(r.Keys, securityv1alpha1.SignatureKey{PublicKey: p})
	}
	return r
}

func keylessRule(trustRoot string, ids ...securityv1alpha1.KeylessIdentity) securityv1alpha1.SignatureRule {
	return securityv1alpha1.SignatureRule{Keyless: ids,
		TrustRoot: &securityv1alpha1.TrustRootSource{Kind: securityv1alpha1.TrustRootConfigMap, Namespace: "imageguard", Name: trustRoot, Key: "trusted_root.json"}}
}

func reader(t *testing.T, objs ...client.Object) client.Reader {
	t.Helper()
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	return fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()
}

func trustRootConfigMap(name string, data []byte) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "imageguard", Name: name}, Data: map[string]string{"trusted_root.json": string(data)}}
}

// TestVerify signs images in every form cosign writes, with the real libraries, and checks each
// verdict and reason against a real registry (with and without the referrers API).
func TestVerify(t *testing.T) {
	for _, mode := range []string{"referrers API", "referrers tag schema"} {
		t.Run(mode, func(t *testing.T) {
			var opts []testutil.RegistryOption
			if mode == "referrers API" {
				opts = append(opts, testutil.WithReferrers())
			}
			testVerify(t, newWorld(t, opts...))
		})
	}
}

func testVerify(t *testing.T, w *world) {
	// Key, legacy tag.
	tagKey := w.image(t, "tag-key")
	w.reg.PushTagSignatures(t, "tag-key", tagKey.Digest, w.key.KeyTagSignature(t, w.repo("tag-key"), tagKey.Digest))
	// Key, bundle referrer (cosign v3 --key).
	bundleKey := w.image(t, "bundle-key")
	w.reg.PushBundle(t, "bundle-key", bundleKey, w.key.KeyBundle(t, testutil.CosignSignStatement(t, bundleKey.Digest, CosignSignPredicate)), testutil.CosignBundleAnnotations(CosignSignPredicate))
	// Keyless, bundle referrer, through the test Sigstore (Fulcio, Rekor, TSA).
	keyless := w.image(t, "keyless")
	w.reg.PushBundle(t, "keyless", keyless, testutil.KeylessBundle(t, w.sigstore, subject, issuer, testutil.CosignSignStatement(t, keyless.Digest, CosignSignPredicate)), testutil.CosignBundleAnnotations(CosignSignPredicate))
	// Unsigned.
	// Keyless, legacy tag (cosign v2 without --new-bundle-format).
	tagKeyless := w.image(t, "tag-keyless")
	w.reg.PushTagSignatures(t, "tag-keyless", tagKeyless.Digest, testutil.KeylessTagSignature(t, w.sigstore, subject, issuer, w.repo("tag-keyless"), tagKeyless.Digest))
	w.image(t, "unsigned")
	// Signed by another key.
	otherKey := w.image(t, "other-key")
	w.reg.PushTagSignatures(t, "other-key", otherKey.Digest, w.other.KeyTagSignature(t, w.repo("other-key"), otherKey.Digest))
	// A signature tag copied from another image: a valid signature of another digest.
	copied := w.image(t, "copied")
	w.reg.PushTagSignatures(t, "copied", copied.Digest, w.key.KeyTagSignature(t, w.repo("tag-key"), tagKey.Digest))
	// A payload tampered with after signing.
	tampered := w.image(t, "tampered")
	sig := w.key.KeyTagSignature(t, w.repo("tampered"), tampered.Digest)
	sig.Payload = []byte(strings.Replace(string(sig.Payload), `"optional":null`, `"optional":{"by":"mallory"}`, 1))
	w.reg.PushTagSignatures(t, "tampered", tampered.Digest, sig)
	// A bundle of the key that is an attestation, not a signature.
	attested := w.image(t, "attested")
	w.reg.PushBundle(t, "attested", attested, w.key.KeyBundle(t, testutil.CosignSignStatement(t, attested.Digest, "https://slsa.dev/provenance/v1")), nil)
	// A keyless bundle for another digest.
	keylessOther := w.image(t, "keyless-other")
	w.reg.PushBundle(t, "keyless-other", keylessOther, testutil.KeylessBundle(t, w.sigstore, subject, issuer, testutil.CosignSignStatement(t, keyless.Digest, CosignSignPredicate)), testutil.CosignBundleAnnotations(CosignSignPredicate))
	// An expired certificate with no timestamp and no log entry.
	expired := w.image(t, "expired")
	expiredBundle, expiredRoot := expiredCertBundle(t, subject, issuer, testutil.CosignSignStatement(t, expired.Digest, CosignSignPredicate))
	w.reg.PushBundle(t, "expired", expired, expiredBundle, testutil.CosignBundleAnnotations(CosignSignPredicate))

	otherSigstore, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	otherRootJSON := testutil.TrustRootJSON(t, otherSigstore)
	r := reader(t, trustRootConfigMap("root", w.trustRoot), trustRootConfigMap("other-root", otherRootJSON),
		trustRootConfigMap("expired-root", expiredRoot), trustRootConfigMap("garbage", []byte(`{"mediaType": 1}`)),
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "imageguard", Name: "cosign"}, Data: map[string][]byte{"cosign.pub": []byte(w.key.PublicPEM)}})

	exactID := securityv1alpha1.KeylessIdentity{Issuer: issuer, Subject: subject}
	regexpID := securityv1alpha1.KeylessIdentity{Issuer: issuer, SubjectRegExp: `.*@example\.com`}
	noTimes := keylessRule("expired-root", exactID)
	noTimes.RequireSignedTimestamp, noTimes.RequireTransparencyLog = ptr.To(false), ptr.To(false)
	secretKey := securityv1alpha1.SignatureRule{Keys: []securityv1alpha1.SignatureKey{{SecretRef: &securityv1alpha1.SecretKeySelector{Namespace: "imageguard", Name: "cosign", Key: "cosign.pub"}}}}

	tests := map[string]struct {
		image      string
		rule       securityv1alpha1.SignatureRule
		wantReason string // "" for verified
		wantSource string
		wantIn     string
	}{
		"key, legacy tag":                       {image: "tag-key", rule: keyRule(w.key.PublicPEM), wantSource: securityv1alpha1.SignatureSourceTag},
		"key from a Secret":                     {image: "tag-key", rule: secretKey, wantSource: securityv1alpha1.SignatureSourceTag},
		"one of two keys":                       {image: "tag-key", rule: keyRule(w.other.PublicPEM, w.key.PublicPEM), wantSource: securityv1alpha1.SignatureSourceTag},
		"key, bundle referrer":                  {image: "bundle-key", rule: keyRule(w.key.PublicPEM), wantSource: securityv1alpha1.SignatureSourceReferrer},
		"keyless, exact identity":               {image: "keyless", rule: keylessRule("root", exactID), wantSource: securityv1alpha1.SignatureSourceReferrer},
		"keyless, subject regexp":               {image: "keyless", rule: keylessRule("root", regexpID), wantSource: securityv1alpha1.SignatureSourceReferrer},
		"keyless, legacy tag":                   {image: "tag-keyless", rule: keylessRule("root", regexpID), wantSource: securityv1alpha1.SignatureSourceTag},
		"keyless, legacy tag, another identity": {image: "tag-keyless", rule: keylessRule("root", securityv1alpha1.KeylessIdentity{Issuer: issuer, Subject: "mallory@example.com"}), wantReason: securityv1alpha1.ReasonIdentityMismatch},
		"keyless, legacy tag, another CA":       {image: "tag-keyless", rule: keylessRule("other-root", exactID), wantReason: securityv1alpha1.ReasonSignatureInvalid},
		"no signature":                          {image: "unsigned", rule: keyRule(w.key.PublicPEM), wantReason: securityv1alpha1.ReasonSignatureMissing},
		"no signature, keyless":                 {image: "unsigned", rule: keylessRule("root", exactID), wantReason: securityv1alpha1.ReasonSignatureMissing},
		"another key":                           {image: "other-key", rule: keyRule(w.key.PublicPEM), wantReason: securityv1alpha1.ReasonSignatureInvalid},
		"a signature copied from another image": {image: "copied", rule: keyRule(w.key.PublicPEM), wantReason: securityv1alpha1.ReasonSignatureInvalid, wantIn: "copied"},
		"tampered payload":                      {image: "tampered", rule: keyRule(w.key.PublicPEM), wantReason: securityv1alpha1.ReasonSignatureInvalid},
		"an attestation is not a signature":     {image: "attested", rule: keyRule(w.key.PublicPEM), wantReason: securityv1alpha1.ReasonSignatureInvalid, wantIn: "not a signature"},
		"a key signature under keyless rules":   {image: "tag-key", rule: keylessRule("root", exactID), wantReason: securityv1alpha1.ReasonSignatureInvalid},
		"a keyless signature under key rules":   {image: "keyless", rule: keyRule(w.key.PublicPEM), wantReason: securityv1alpha1.ReasonSignatureInvalid},
		"keyless for another digest":            {image: "keyless-other", rule: keylessRule("root", exactID), wantReason: securityv1alpha1.ReasonSignatureInvalid},
		"identity mismatch": {image: "keyless", rule: keylessRule("root", securityv1alpha1.KeylessIdentity{Issuer: issuer, Subject: "mallory@example.com"}),
			wantReason: securityv1alpha1.ReasonIdentityMismatch, wantIn: subject},
		"issuer mismatch": {image: "keyless", rule: keylessRule("root", securityv1alpha1.KeylessIdentity{IssuerRegExp: `https://accounts\.example\.org`, SubjectRegExp: ".*"}),
			wantReason: securityv1alpha1.ReasonIdentityMismatch},
		"a regexp matches whole values only": {image: "keyless", rule: keylessRule("root", securityv1alpha1.KeylessIdentity{Issuer: issuer, SubjectRegExp: `release`}),
			wantReason: securityv1alpha1.ReasonIdentityMismatch},
		"trust root without the CA":               {image: "keyless", rule: keylessRule("other-root", exactID), wantReason: securityv1alpha1.ReasonSignatureInvalid},
		"certificate expired with no timestamp":   {image: "expired", rule: noTimes, wantReason: securityv1alpha1.ReasonSignatureInvalid, wantIn: "certificate"},
		"no timestamp where one is required":      {image: "expired", rule: keylessRule("expired-root", exactID), wantReason: securityv1alpha1.ReasonSignatureInvalid},
		"trust root missing":                      {image: "keyless", rule: keylessRule("absent", exactID), wantReason: securityv1alpha1.ReasonTrustRootInvalid},
		"trust root that does not parse":          {image: "keyless", rule: keylessRule("garbage", exactID), wantReason: securityv1alpha1.ReasonTrustRootInvalid},
		"a key or an identity: the key signed":    {image: "tag-key", rule: withKeys(keylessRule("root", exactID), w.key.PublicPEM), wantSource: securityv1alpha1.SignatureSourceTag},
		"a key or an identity: the identity did":  {image: "keyless", rule: withKeys(keylessRule("root", exactID), w.key.PublicPEM), wantSource: securityv1alpha1.SignatureSourceReferrer},
		"a key or an identity: neither signed it": {image: "unsigned", rule: withKeys(keylessRule("root", exactID), w.key.PublicPEM), wantReason: securityv1alpha1.ReasonSignatureMissing},
	}
	v := &Verifier{Registry: w.client, Reader: r}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			got := v.Verify(context.Background(), authorities(t, tt.rule), w.repo(tt.image), w.images[tt.image].Digest.String(), nil)
			if tt.wantReason == "" {
				g.Expect(got.Verified).To(BeTrue(), got.Message)
				g.Expect(got.Signers).NotTo(BeEmpty())
				g.Expect(got.Signers[0].Source).To(Equal(tt.wantSource))
				return
			}
			g.Expect(got.Verified).To(BeFalse())
			g.Expect(got.Reason).To(Equal(tt.wantReason), got.Message)
			g.Expect(got.Message).To(ContainSubstring(tt.wantIn))
		})
	}
	// Who signed: the key's fingerprint, the certificate's identity.
	g := NewWithT(t)
	got := v.Verify(context.Background(), authorities(t, keyRule(w.key.PublicPEM)), w.repo("tag-key"), tagKey.Digest.String(), nil)
	g.Expect(got.Signers[0].Identity).To(Equal(Fingerprint(w.key.Private.Public())))
	got = v.Verify(context.Background(), authorities(t, keylessRule("root", regexpID)), w.repo("keyless"), keyless.Digest.String(), nil)
	g.Expect(got.Signers[0].Identity).To(Equal(subject + " (" + issuer + ")"))
	g.Expect(got.Signers[0].Authority).To(Equal(`keyless https://oidc.example.com ~.*@example\.com`))
}

func withKeys(r securityv1alpha1.SignatureRule, pems ...string) securityv1alpha1.SignatureRule {
	for _, p := range pems {
		r.Keys = append(r.Keys, securityv1alpha1.SignatureKey{PublicKey: p})
	}
	return r
}

// TestRegistryRefusesTheRead: a registry that answers 401 to the signature read gives
// RegistryError, never SignatureMissing; with the pull secret's credentials, the signature
// verifies.
func TestRegistryRefusesTheRead(t *testing.T) {
	g := NewWithT(t)
	w := newWorld(t, testutil.WithBasicAuth("puller", "s3cret"))
	d := w.image(t, "private")
	w.reg.PushTagSignatures(t, "private", d.Digest, w.key.KeyTagSignature(t, w.repo("private"), d.Digest))
	v := &Verifier{Registry: w.client, Reader: reader(t)}
	a := authorities(t, keyRule(w.key.PublicPEM))
	got := v.Verify(context.Background(), a, w.repo("private"), d.Digest.String(), nil)
	g.Expect(got.Reason).To(Equal(securityv1alpha1.ReasonRegistryError), got.Message)
	g.Expect(got.Message).NotTo(ContainSubstring("s3cret"))
	keychain := staticKeychain{&authn.Basic{Username: "puller", Password: "s3cret"}}
	got = v.Verify(context.Background(), a, w.repo("private"), d.Digest.String(), keychain)
	g.Expect(got.Verified).To(BeTrue(), got.Message)

	// Only the signature read refused (the image itself is readable): still RegistryError.
	w2 := newWorld(t)
	d2 := w2.image(t, "app")
	w2.reg.PushTagSignatures(t, "app", d2.Digest, w2.key.KeyTagSignature(t, w2.repo("app"), d2.Digest))
	w2.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, ".sig") || strings.Contains(r.URL.Path, "/referrers/") || strings.Contains(r.URL.Path, "sha256-") {
			rw.WriteHeader(http.StatusUnauthorized)
			return true
		}
		return false
	})
	got = (&Verifier{Registry: w2.client, Reader: reader(t)}).Verify(context.Background(), authorities(t, keyRule(w2.key.PublicPEM)), w2.repo("app"), d2.Digest.String(), nil)
	g.Expect(got.Reason).To(Equal(securityv1alpha1.ReasonRegistryError), got.Message)
}

type staticKeychain struct{ auth authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }

// TestCheckCachesVerdicts: a thousand checks of one digest read its signatures once; a verdict
// older than the recheck interval is verified again; the checks of a key share one verification.
func TestCheckCachesVerdicts(t *testing.T) {
	g := NewWithT(t)
	w := newWorld(t, testutil.WithReferrers())
	d := w.image(t, "app")
	w.reg.PushTagSignatures(t, "app", d.Digest, w.key.KeyTagSignature(t, w.repo("app"), d.Digest))
	now := time.Now()
	clk := &fakeClock{now: now}
	var changes int
	v := &Verifier{Registry: w.client, Reader: reader(t), Clock: clk, RecheckInterval: time.Hour, OnVerdict: func(Key, Verdict) { changes++ }}
	a := authorities(t, keyRule(w.key.PublicPEM))
	k := Key{Namespace: "shop", Digest: d.Digest.String(), Authorities: a.ID}
	w.reg.ResetCounts()
	done := make(chan bool, 1000)
	for range 1000 {
		go func() {
			verdict, ok := v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
			done <- ok && verdict.Verified
		}()
	}
	for range 1000 {
		g.Expect(<-done).To(BeTrue())
	}
	g.Expect(v.Reads()).To(Equal(int64(1)))
	reads := w.reg.Counts().Requests
	g.Expect(reads).To(BeNumerically(">", 0))
	g.Expect(changes).To(Equal(1))

	clk.now = now.Add(2 * time.Hour)
	verdict, ok := v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue())
	g.Expect(v.Reads()).To(Equal(int64(2)))
	g.Expect(changes).To(Equal(1), "the same verdict again is no change")

	// A context that ends first: the stale verdict stands; none when there is none.
	clk.now = now.Add(4 * time.Hour)
	w.reg.SetFault(w.reg.HangFault())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	verdict, ok = v.Check(ctx, k, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue())
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	_, ok = v.Check(ctx2, Key{Namespace: "other", Digest: k.Digest, Authorities: k.Authorities}, a, w.repo("app"), nil, 0)
	g.Expect(ok).To(BeFalse())
}

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time                  { return c.now }
func (c *fakeClock) Since(t time.Time) time.Duration { return c.now.Sub(t) }

// TestRotatedKeyRevokesVerdicts: once the key Secret holds another key, a verdict made with the
// old one no longer stands (within the 30 s the material is reused), although the policy did not
// change.
func TestRotatedKeyRevokesVerdicts(t *testing.T) {
	g := NewWithT(t)
	w := newWorld(t)
	d := w.image(t, "app")
	w.reg.PushTagSignatures(t, "app", d.Digest, w.key.KeyTagSignature(t, w.repo("app"), d.Digest))
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "imageguard", Name: "cosign"}, Data: map[string][]byte{"cosign.pub": []byte(w.key.PublicPEM)}}
	r := reader(t, secret).(client.Client)
	now := time.Now()
	clk := &fakeClock{now: now}
	v := &Verifier{Registry: w.client, Reader: r, Clock: clk}
	a := authorities(t, securityv1alpha1.SignatureRule{Keys: []securityv1alpha1.SignatureKey{{SecretRef: &securityv1alpha1.SecretKeySelector{Namespace: "imageguard", Name: "cosign", Key: "cosign.pub"}}}})
	k := Key{Namespace: "shop", Digest: d.Digest.String(), Authorities: a.ID}
	verdict, ok := v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue(), verdict.Message)

	secret.Data["cosign.pub"] = []byte(w.other.PublicPEM)
	g.Expect(r.Update(context.Background(), secret)).To(Succeed())
	clk.now = now.Add(materialFor + time.Second)
	verdict, ok = v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
	g.Expect(ok).To(BeTrue())
	g.Expect(verdict.Verified).To(BeFalse())
	g.Expect(verdict.Reason).To(Equal(securityv1alpha1.ReasonSignatureInvalid))
}

// TestAttestationsTakeNoShareOfTheBound: an image with more attestations than MaxBundles (as a
// build system attaches provenance, SBOMs and VEX) still verifies by its signature where the
// registry's referrers name each one's predicate type (the referrers API), and the attestations are
// not even read. The referrers tag schema keeps no annotations (neither go-containerregistry's nor
// cosign's fallback writes them): there the signature past the bound is not read, and the image is
// refused, never passed.
func TestAttestationsTakeNoShareOfTheBound(t *testing.T) {
	for _, mode := range []string{"referrers API", "referrers tag schema"} {
		t.Run(mode, func(t *testing.T) {
			var opts []testutil.RegistryOption
			if mode == "referrers API" {
				opts = append(opts, testutil.WithReferrers())
			}
			g := NewWithT(t)
			w := newWorld(t, opts...)
			img := w.image(t, "attested")
			const attestations = MaxBundles + 8
			for i := range attestations {
				pt := fmt.Sprintf("https://example.com/predicate/%d", i)
				w.reg.PushBundle(t, "attested", img, w.key.KeyBundle(t, testutil.CosignSignStatement(t, img.Digest, pt)), testutil.CosignBundleAnnotations(pt))
			}
			sig := w.reg.PushBundle(t, "attested", img, w.key.KeyBundle(t, testutil.CosignSignStatement(t, img.Digest, CosignSignPredicate)), testutil.CosignBundleAnnotations(CosignSignPredicate))
			// The fallback index is sorted by digest: where the signature falls is chance.
			d, err := name.NewDigest(w.repo("attested")+"@"+img.Digest.String(), name.Insecure)
			g.Expect(err).NotTo(HaveOccurred())
			idx, err := remote.Referrers(d)
			g.Expect(err).NotTo(HaveOccurred())
			im, err := idx.IndexManifest()
			g.Expect(err).NotTo(HaveOccurred())
			position := slices.IndexFunc(im.Manifests, func(m v1.Descriptor) bool { return m.Digest == sig })
			g.Expect(position).To(BeNumerically(">=", 0))
			w.reg.ResetCounts()
			v := &Verifier{Registry: w.client}
			got := v.Verify(context.Background(), authorities(t, keyRule(w.key.PublicPEM)), w.repo("attested"), img.Digest.String(), nil)
			if mode == "referrers tag schema" && position >= MaxBundles {
				g.Expect(got.Verified).To(BeFalse())
				g.Expect(got.Reason).To(Equal(securityv1alpha1.ReasonSignatureInvalid))
				g.Expect(got.Message).To(ContainSubstring("more than %d Sigstore bundles", MaxBundles))
				return
			}
			g.Expect(got.Verified).To(BeTrue(), got.Message)
			g.Expect(got.Signers[0].Source).To(Equal(securityv1alpha1.SignatureSourceReferrer))
			if mode == "referrers tag schema" {
				return
			}
			// The signature tag (absent), the referrers, the signature's manifest; its bundle.
			g.Expect(w.reg.Counts().ManifestGETs).To(BeNumerically("<=", 3))
			g.Expect(w.reg.Counts().BlobGETs).To(Equal(1))
		})
	}
}

// TestASlowNamespaceLeavesSlotsToTheOthers: verifications of one namespace's images in a registry
// that never answers hold at most half the slots; another namespace's images are verified
// meanwhile.
func TestASlowNamespaceLeavesSlotsToTheOthers(t *testing.T) {
	g := NewWithT(t)
	hang := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
			if strings.HasPrefix(req.URL.Path, "/v2/tarpit/") {
				<-req.Context().Done()
				return
			}
			next.ServeHTTP(rw, req)
		})
	}
	w := newWorld(t, testutil.WithHandlerWrapper(hang))
	d := w.image(t, "app")
	w.reg.PushTagSignatures(t, "app", d.Digest, w.key.KeyTagSignature(t, w.repo("app"), d.Digest))
	v := &Verifier{Registry: w.client, Reader: reader(t), MaxConcurrent: 4, Timeout: time.Minute}
	a := authorities(t, keyRule(w.key.PublicPEM))
	// More tarpit digests than there are slots; none can be verified.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 8 {
		digest := fmt.Sprintf("sha256:%064x", i)
		go v.Check(ctx, Key{Namespace: "mallory", Digest: digest, Authorities: a.ID}, a, w.repo("tarpit"), nil, 0)
	}
	g.Eventually(func() int { return int(v.Reads()) }).Should(Equal(2), "half the slots are mallory's")
	checked, stop := context.WithTimeout(context.Background(), 20*time.Second)
	defer stop()
	verdict, ok := v.Check(checked, Key{Namespace: "shop", Digest: d.Digest.String(), Authorities: a.ID}, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue(), verdict.Message)
	g.Consistently(func() int { return int(v.Reads()) }, 200*time.Millisecond).Should(Equal(3))

	// A flood of digests: no more than maxNamespaceRuns verifications wait for mallory's share;
	// the rest are answered at once with nothing kept (refused under Enforce).
	for i := range 2 * maxNamespaceRuns {
		digest := fmt.Sprintf("sha256:%064x", 100+i)
		go v.Check(ctx, Key{Namespace: "mallory", Digest: digest, Authorities: a.ID}, a, w.repo("tarpit"), nil, 0)
	}
	users := func() int {
		v.mu.Lock()
		defer v.mu.Unlock()
		if sh := v.shares["mallory"]; sh != nil {
			return sh.users
		}
		return 0
	}
	g.Eventually(users).Should(Equal(maxNamespaceRuns))
	_, ok = v.Check(context.Background(), Key{Namespace: "mallory", Digest: fmt.Sprintf("sha256:%064x", 999), Authorities: a.ID}, a, w.repo("tarpit"), nil, 0)
	g.Expect(ok).To(BeFalse())
	g.Expect(users()).To(Equal(maxNamespaceRuns))
}

// ctxReader fails every read whose context has ended, as the API server's client does.
type ctxReader struct{ client.Reader }

func (r ctxReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.Reader.Get(ctx, key, obj, opts...)
}

// TestACallersDeadlineNeitherFailsNorForgets: a caller whose deadline has passed before the key
// Secret was read again (an admission request whose tag lookups used up its budget) gets no
// verified verdict (the key may have been rotated), and neither drops the kept verdicts of others
// nor leaves a failed read of the key Secret behind for them.
func TestACallersDeadlineNeitherFailsNorForgets(t *testing.T) {
	g := NewWithT(t)
	w := newWorld(t)
	d := w.image(t, "app")
	w.reg.PushTagSignatures(t, "app", d.Digest, w.key.KeyTagSignature(t, w.repo("app"), d.Digest))
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "imageguard", Name: "cosign"}, Data: map[string][]byte{"cosign.pub": []byte(w.key.PublicPEM)}}
	now := time.Now()
	clk := &fakeClock{now: now}
	v := &Verifier{Registry: w.client, Reader: ctxReader{reader(t, secret)}, Clock: clk}
	a := authorities(t, securityv1alpha1.SignatureRule{Keys: []securityv1alpha1.SignatureKey{{SecretRef: &securityv1alpha1.SecretKeySelector{Namespace: "imageguard", Name: "cosign", Key: "cosign.pub"}}}})
	k := Key{Namespace: "shop", Digest: d.Digest.String(), Authorities: a.ID}
	verdict, ok := v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue(), verdict.Message)

	clk.now = now.Add(materialFor + time.Second) // the material is read again
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	// Whether the key was rotated meanwhile is not known: no verified verdict for it.
	_, ok = v.Check(ended, k, a, w.repo("app"), nil, 0)
	g.Expect(ok).To(BeFalse())
	other := Key{Namespace: "other", Digest: d.Digest.String(), Authorities: a.ID}
	verdict, ok = v.Check(context.Background(), other, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue(), verdict.Message)
	verdict, ok = v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue(), verdict.Message)
}

// TestAFailingRegistryKeepsAVerifiedVerdict: past the recheck interval, a registry that fails
// (or a verification that gets no slot) leaves a verified verdict made with the same key standing:
// a digest's signatures stop verifying only when the key or trust root changes. It is verified
// again a minute later, and the registry answering again refreshes it.
func TestAFailingRegistryKeepsAVerifiedVerdict(t *testing.T) {
	g := NewWithT(t)
	w := newWorld(t)
	d := w.image(t, "app")
	w.reg.PushTagSignatures(t, "app", d.Digest, w.key.KeyTagSignature(t, w.repo("app"), d.Digest))
	now := time.Now()
	clk := &fakeClock{now: now}
	v := &Verifier{Registry: w.client, Reader: reader(t), Clock: clk, RecheckInterval: time.Hour}
	a := authorities(t, keyRule(w.key.PublicPEM))
	k := Key{Namespace: "shop", Digest: d.Digest.String(), Authorities: a.ID}
	verdict, ok := v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue(), verdict.Message)

	w.reg.SetFault(testutil.StatusFault(http.StatusServiceUnavailable))
	clk.now = now.Add(2 * time.Hour)
	verdict, ok = v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue(), verdict.Message)
	g.Expect(verdict.CheckedAt).To(Equal(now), "it claims no check that did not verify")
	g.Expect(v.Reads()).To(Equal(int64(2)))
	_, _ = v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
	g.Expect(v.Reads()).To(Equal(int64(2)), "not verified again within the minute")

	w.reg.SetFault(nil)
	clk.now = now.Add(2*time.Hour + transientFor + time.Second)
	verdict, ok = v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
	g.Expect(ok && verdict.Verified).To(BeTrue(), verdict.Message)
	g.Expect(verdict.CheckedAt).To(Equal(clk.now))
	g.Expect(v.Reads()).To(Equal(int64(3)))

	// Under another key's rule, a failing registry passes nothing.
	w.reg.SetFault(testutil.StatusFault(http.StatusServiceUnavailable))
	b := authorities(t, keyRule(w.other.PublicPEM))
	kb := Key{Namespace: "shop", Digest: d.Digest.String(), Authorities: b.ID}
	verdict, ok = v.Check(context.Background(), kb, b, w.repo("app"), nil, 0)
	g.Expect(ok).To(BeTrue())
	g.Expect(verdict.Verified).To(BeFalse())
}

// failingReader answers every read with err while it is set.
type failingReader struct {
	client.Reader
	mu  sync.Mutex
	err error
}

func (r *failingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	r.mu.Lock()
	err := r.err
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return r.Reader.Get(ctx, key, obj, opts...)
}

// TestAnUnansweredKeyReadStandsInForAWhile: while the API server does not answer, the key read
// last stands in for materialStaleFor, not longer; a Forbidden is an answer, and revokes.
func TestAnUnansweredKeyReadStandsInForAWhile(t *testing.T) {
	g := NewWithT(t)
	w := newWorld(t)
	d := w.image(t, "app")
	w.reg.PushTagSignatures(t, "app", d.Digest, w.key.KeyTagSignature(t, w.repo("app"), d.Digest))
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "imageguard", Name: "cosign"}, Data: map[string][]byte{"cosign.pub": []byte(w.key.PublicPEM)}}
	r := &failingReader{Reader: reader(t, secret)}
	now := time.Now()
	clk := &fakeClock{now: now}
	v := &Verifier{Registry: w.client, Reader: r, Clock: clk, RecheckInterval: time.Minute}
	a := authorities(t, securityv1alpha1.SignatureRule{Keys: []securityv1alpha1.SignatureKey{{SecretRef: &securityv1alpha1.SecretKeySelector{Namespace: "imageguard", Name: "cosign", Key: "cosign.pub"}}}})
	k := Key{Namespace: "shop", Digest: d.Digest.String(), Authorities: a.ID}
	check := func() Verdict {
		verdict, ok := v.Check(context.Background(), k, a, w.repo("app"), nil, 0)
		g.Expect(ok).To(BeTrue())
		return verdict
	}
	g.Expect(check().Verified).To(BeTrue())

	r.mu.Lock()
	r.err = apierrors.NewServiceUnavailable("etcd is down")
	r.mu.Unlock()
	clk.now = now.Add(2 * time.Minute)
	g.Expect(check().Verified).To(BeTrue(), "the last keys read stand in")
	clk.now = now.Add(materialStaleFor + time.Second)
	verdict := check()
	g.Expect(verdict.Verified).To(BeFalse())
	g.Expect(verdict.Reason).To(Equal(securityv1alpha1.ReasonTrustRootInvalid))

	r.mu.Lock()
	r.err = nil
	r.mu.Unlock()
	clk.now = now.Add(materialStaleFor + 2*time.Minute)
	g.Expect(check().Verified).To(BeTrue())
	r.mu.Lock()
	r.err = apierrors.NewForbidden(corev1.Resource("secrets"), "cosign", errors.New("RBAC"))
	r.mu.Unlock()
	clk.now = now.Add(materialStaleFor + 3*time.Minute)
	verdict = check()
	g.Expect(verdict.Verified).To(BeFalse(), "a Forbidden is an answer")
	g.Expect(verdict.Reason).To(Equal(securityv1alpha1.ReasonTrustRootInvalid))
}
