package signature

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	sigsig "github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
)

// CosignSignPredicate is the in-toto predicate type of cosign v3's image signatures (a DSSE
// envelope whose statement's subject is the image digest).
const CosignSignPredicate = "https://sigstore.dev/cosign/sign/v1"

// errTrustRoot marks an error of the policy's trust material (TrustRootInvalid).
var errTrustRoot = errors.New("trust material")

// errReadFailed marks a read of the trust material that failed without an answer about it (the
// API server unavailable, a deadline): what was read before still stands.
var errReadFailed = errors.New("the read failed")

// readError is err of reading what, marked errReadFailed unless the API server answered about
// the object (not there, or not ours to read).
func readError(what string, err error) error {
	if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		return fmt.Errorf("%w: reading %s: %v", errTrustRoot, what, err)
	}
	return fmt.Errorf("%w: %w: reading %s: %v", errTrustRoot, errReadFailed, what, err)
}

// material is a policy's authorities, read and parsed: one sigstore-go verifier per key, and one
// for the keyless identities over the trust root.
type material struct {
	// fingerprint is a digest of the key and trust-root bytes read: a verdict made with other
	// bytes (a rotated key, a CA removed) no longer stands.
	fingerprint string
	keys        []keyAuthority
	// keyless verifies certificates against the trust root; nil without identities.
	keyless    *verify.Verifier
	identities []verify.CertificateIdentity
	labels     []string // the authority name of each identity
}

type keyAuthority struct {
	label, fingerprint string
	verifier           *verify.Verifier
}

// readMaterial reads and parses the keys and trust root of a (Secrets and ConfigMaps by name,
// through reader: uncached). Every error wraps errTrustRoot.
func readMaterial(ctx context.Context, reader client.Reader, a *policy.SignatureAuthorities) (*material, error) {
	m := &material{}
	sum := sha256.New()
	defer func() { m.fingerprint = hex.EncodeToString(sum.Sum(nil)) }()
	for i, k := range a.Rule.Keys {
		pemData := []byte(k.PublicKey)
		if ref := k.SecretRef; ref != nil {
			s := &corev1.Secret{}
			if err := reader.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, s); err != nil {
				return nil, readError(fmt.Sprintf("key Secret %s/%s", ref.Namespace, ref.Name), err)
			}
			if pemData = s.Data[ref.Key]; len(pemData) == 0 {
				return nil, fmt.Errorf("%w: key Secret %s/%s has no key %q", errTrustRoot, ref.Namespace, ref.Name, ref.Key)
			}
		}
		sum.Write(pemData)
		sum.Write([]byte{0})
		label := a.KeyAuthority(i)
		pub, err := policy.ParsePublicKey(pemData)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", errTrustRoot, label, err)
		}
		ka, err := newKeyAuthority(label, pub)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", errTrustRoot, label, err)
		}
		m.keys = append(m.keys, ka)
	}
	if len(a.Rule.Keyless) == 0 {
		return m, nil
	}
	t := a.Rule.TrustRoot
	data, err := readTrustRoot(ctx, reader, t)
	if err != nil {
		return nil, err
	}
	sum.Write(data)
	tr, err := root.NewTrustedRootFromJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%w: trust root %s %s/%s[%s] does not parse: %v", errTrustRoot, t.Kind, t.Namespace, t.Name, t.Key, err)
	}
	if len(tr.FulcioCertificateAuthorities()) == 0 {
		return nil, fmt.Errorf("%w: trust root %s %s/%s[%s] has no certificate authority", errTrustRoot, t.Kind, t.Namespace, t.Name, t.Key)
	}
	if m.keyless, err = newKeylessVerifier(tr, a.RequireTransparencyLog(), a.RequireSignedTimestamp()); err != nil {
		return nil, fmt.Errorf("%w: %v", errTrustRoot, err)
	}
	for i, id := range a.Rule.Keyless {
		issuerRE, subjectRE := id.IssuerRegExp, id.SubjectRegExp
		if issuerRE != "" {
			issuerRE = policy.AnchoredRegExp(issuerRE)
		}
		if subjectRE != "" {
			subjectRE = policy.AnchoredRegExp(subjectRE)
		}
		ci, err := verify.NewShortCertificateIdentity(id.Issuer, issuerRE, id.Subject, subjectRE)
		if err != nil {
			return nil, fmt.Errorf("%w: keyless[%d]: %v", errTrustRoot, i, err)
		}
		m.identities = append(m.identities, ci)
		m.labels = append(m.labels, a.IdentityAuthority(i))
	}
	return m, nil
}

// readTrustRoot reads the trusted_root.json of t.
func readTrustRoot(ctx context.Context, reader client.Reader, t *securityv1alpha1.TrustRootSource) ([]byte, error) {
	key := client.ObjectKey{Namespace: t.Namespace, Name: t.Name}
	var data []byte
	switch t.Kind {
	case securityv1alpha1.TrustRootSecret:
		s := &corev1.Secret{}
		if err := reader.Get(ctx, key, s); err != nil {
			return nil, readError(fmt.Sprintf("trust root Secret %s/%s", t.Namespace, t.Name), err)
		}
		data = s.Data[t.Key]
	default:
		cm := &corev1.ConfigMap{}
		if err := reader.Get(ctx, key, cm); err != nil {
			return nil, readError(fmt.Sprintf("trust root ConfigMap %s/%s", t.Namespace, t.Name), err)
		}
		data = []byte(cm.Data[t.Key])
		if len(data) == 0 {
			data = cm.BinaryData[t.Key]
		}
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: trust root %s %s/%s has no key %q", errTrustRoot, t.Kind, t.Namespace, t.Name, t.Key)
	}
	return data, nil
}

// newKeyAuthority returns the verifier of signatures by pub: the key alone decides (no
// transparency log, no timestamp), whatever key hint a bundle carries.
func newKeyAuthority(label string, pub crypto.PublicKey) (keyAuthority, error) {
	sv, err := sigsig.LoadDefaultVerifier(pub)
	if err != nil {
		return keyAuthority{}, err
	}
	key := root.NewExpiringKey(sv, time.Time{}, time.Time{})
	tm := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return key, nil })
	v, err := verify.NewVerifier(tm, verify.WithNoObserverTimestamps())
	if err != nil {
		return keyAuthority{}, err
	}
	return keyAuthority{label: label, fingerprint: Fingerprint(pub), verifier: v}, nil
}

// newKeylessVerifier returns the verifier of certificates of tr's CAs: with a transparency-log
// entry and a signed timestamp as the rule requires, the certificate valid at the time they give
// (now when neither is required), and an SCT of tr's CT logs when it lists any.
func newKeylessVerifier(tr root.TrustedMaterial, requireTlog, requireTimestamp bool) (*verify.Verifier, error) {
	var opts []verify.VerifierOption
	if requireTlog {
		opts = append(opts, verify.WithTransparencyLog(1))
	}
	switch {
	case requireTimestamp:
		opts = append(opts, verify.WithSignedTimestamps(1))
	case requireTlog:
		opts = append(opts, verify.WithIntegratedTimestamps(1))
	default:
		opts = append(opts, verify.WithCurrentTime())
	}
	if len(tr.CTLogs()) > 0 {
		opts = append(opts, verify.WithSignedCertificateTimestamps(1))
	}
	return verify.NewVerifier(tr, opts...)
}

// Fingerprint names a public key: SHA256:<base64 of the SHA-256 of its PKIX form>, as ssh-keygen
// spells fingerprints.
func Fingerprint(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "SHA256:?"
	}
	sum := sha256.Sum256(der)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// outcome is one candidate checked against every authority.
type outcome struct {
	signers []securityv1alpha1.Signer
	// mismatch is set when a keyless signature verified but named another identity.
	mismatch error
	// invalid is the last reason the candidate did not verify.
	invalid error
}

// check verifies c, a signature of digest (sha256:<hex>), against every authority of m.
func (m *material) check(c candidate, digest string) outcome {
	var o outcome
	if c.broken != nil {
		o.invalid = c.broken
		return o
	}
	entity, artifact, err := c.entity(digest)
	if err != nil {
		o.invalid = err
		return o
	}
	for _, k := range m.keys {
		res, err := k.verifier.Verify(entity, verify.NewPolicy(artifact(), verify.WithKey()))
		if err == nil {
			err = isSignature(res)
		}
		if err != nil {
			o.invalid = fmt.Errorf("%s: %w", k.label, err)
			continue
		}
		o.signers = append(o.signers, securityv1alpha1.Signer{Authority: k.label, Identity: k.fingerprint, Source: c.source})
	}
	if m.keyless == nil {
		return o
	}
	if vc, err := entity.VerificationContent(); err != nil || vc.Certificate() == nil {
		if len(m.keys) == 0 {
			o.invalid = errors.New("signed with a key, not a certificate")
		}
		return o
	}
	opts := make([]verify.PolicyOption, 0, len(m.identities))
	for _, id := range m.identities {
		opts = append(opts, verify.WithCertificateIdentity(id))
	}
	res, err := m.keyless.Verify(entity, verify.NewPolicy(artifact(), opts...))
	if err == nil {
		err = isSignature(res)
	}
	var noMatch *verify.ErrNoMatchingCertificateIdentity
	switch {
	case errors.As(err, &noMatch):
		o.mismatch = fmt.Errorf("signed by %s, which no keyless identity of the policy names", certificateIdentity(entity))
	case err != nil:
		o.invalid = fmt.Errorf("keyless: %w", err)
	default:
		label, who := "keyless", "?"
		if s := res.Signature; s != nil && s.Certificate != nil {
			who = s.Certificate.SubjectAlternativeName + " (" + s.Certificate.Issuer + ")"
			for i, id := range m.identities {
				if id.Verify(*s.Certificate) == nil {
					label = m.labels[i]
					break
				}
			}
		}
		o.signers = append(o.signers, securityv1alpha1.Signer{Authority: label, Identity: who, Source: c.source})
	}
	return o
}

// certificateIdentity is the subject and issuer of entity's certificate, for a message, as
// sigstore-go summarises a Fulcio certificate.
func certificateIdentity(entity verify.SignedEntity) string {
	vc, err := entity.VerificationContent()
	if err != nil || vc.Certificate() == nil {
		return "?"
	}
	sum, err := certificate.SummarizeCertificate(vc.Certificate())
	if err != nil {
		return "?"
	}
	return sum.SubjectAlternativeName + " (" + sum.Issuer + ")"
}

// isSignature refuses a verified DSSE statement that is not cosign's image signature (an SBOM or
// provenance attestation signed by the same key is not a signature of the image).
func isSignature(res *verify.VerificationResult) error {
	if res != nil && res.Statement != nil && res.Statement.PredicateType != CosignSignPredicate {
		return fmt.Errorf("an attestation of predicate %q, not a signature", res.Statement.PredicateType)
	}
	return nil
}

// entity returns c as sigstore-go verifies it, and the artifact it must sign: the simple-signing
// payload of a signature tag (which must name digest), or digest itself for a bundle.
func (c candidate) entity(digest string) (verify.SignedEntity, func() verify.ArtifactPolicyOption, error) {
	hexDigest, ok := strings.CutPrefix(digest, "sha256:")
	raw, err := hex.DecodeString(hexDigest)
	if !ok || err != nil || len(raw) != sha256.Size {
		return nil, nil, fmt.Errorf("digest %q is not sha256", digest)
	}
	if c.bundle != nil {
		// Only cosign's image signature: a DSSE statement (its predicate checked after
		// verification). A message signature over bytes that happen to be a manifest is what
		// `cosign sign-blob` makes of any file: not a signature of the image.
		if sc, err := c.bundle.SignatureContent(); err != nil || sc.EnvelopeContent() == nil {
			return nil, nil, fmt.Errorf("%s: a message signature, not a DSSE image signature", c.where)
		}
		return c.bundle, func() verify.ArtifactPolicyOption { return verify.WithArtifactDigest("sha256", raw) }, nil
	}
	l := c.legacy
	var p payload.SimpleContainerImage
	if err := json.Unmarshal(l.payload, &p); err != nil {
		return nil, nil, fmt.Errorf("%s: the payload is not a cosign simple-signing document: %v", c.where, err)
	}
	if p.Critical.Type != payload.CosignSignatureType {
		return nil, nil, fmt.Errorf("%s: the payload is of type %q, not a cosign image signature", c.where, p.Critical.Type)
	}
	if p.Critical.Image.DockerManifestDigest != digest {
		return nil, nil, fmt.Errorf("%s: the signature is of %s, not of this digest (a signature copied from another image)", c.where, p.Critical.Image.DockerManifestDigest)
	}
	e, err := l.signedEntity()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", c.where, err)
	}
	return e, func() verify.ArtifactPolicyOption { return verify.WithArtifact(bytes.NewReader(l.payload)) }, nil
}

// legacyEntity is a signature tag layer as sigstore-go's SignedEntity: a message signature over
// the payload, its certificate (or a key), its Rekor entry (with the signed entry timestamp) and
// timestamp, as cosign attached them.
type legacyEntity struct {
	verify.BaseSignedEntity
	content    verify.VerificationContent
	signature  *bundle.MessageSignature
	entries    []*tlog.Entry
	timestamps [][]byte
}

func (l *legacySignature) signedEntity() (*legacyEntity, error) {
	sum := sha256.Sum256(l.payload)
	e := &legacyEntity{signature: bundle.NewMessageSignature(sum[:], "SHA2_256", l.signature), content: keyContent{}}
	if len(l.certPEM) > 0 {
		certs, err := cryptoutils.UnmarshalCertificatesFromPEM(l.certPEM)
		if err != nil || len(certs) == 0 {
			return nil, fmt.Errorf("the certificate annotation does not parse: %v", err)
		}
		e.content = bundle.NewCertificate(certs[0])
	}
	if r := l.rekor; r != nil {
		body, err := base64.StdEncoding.DecodeString(r.Payload.Body)
		if err != nil {
			return nil, fmt.Errorf("the Rekor bundle's body does not decode: %v", err)
		}
		logID, err := hex.DecodeString(r.Payload.LogID)
		if err != nil {
			return nil, fmt.Errorf("the Rekor bundle's log ID does not decode: %v", err)
		}
		entry, err := tlog.NewEntry(body, r.Payload.IntegratedTime, r.Payload.LogIndex, logID, r.SignedEntryTimestamp, nil) //nolint:staticcheck // a Rekor v1 entry is what cosign's annotation holds
		if err != nil {
			return nil, fmt.Errorf("the Rekor bundle's entry does not parse: %v", err)
		}
		e.entries = []*tlog.Entry{entry}
	}
	if len(l.timestamp) > 0 {
		e.timestamps = [][]byte{l.timestamp}
	}
	return e, nil
}

func (e *legacyEntity) HasInclusionPromise() bool { return len(e.entries) > 0 }
func (e *legacyEntity) HasInclusionProof() bool   { return false }
func (e *legacyEntity) VerificationContent() (verify.VerificationContent, error) {
	return e.content, nil
}
func (e *legacyEntity) SignatureContent() (verify.SignatureContent, error) { return e.signature, nil }
func (e *legacyEntity) Timestamps() ([][]byte, error)                      { return e.timestamps, nil }
func (e *legacyEntity) TlogEntries() ([]*tlog.Entry, error)                { return e.entries, nil }
func (e *legacyEntity) Version() (string, error)                           { return "v0.3", nil }

// keyContent is the verification content of a signature by a key: the key is the policy's, which
// the trusted material gives whatever the hint.
type keyContent struct{}

func (keyContent) CompareKey(key any, tm root.TrustedMaterial) bool {
	v, err := tm.PublicKeyVerifier("")
	if err != nil {
		return false
	}
	pub, err := v.PublicKey()
	if err != nil {
		return false
	}
	eq, ok := key.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(pub)
}
func (keyContent) ValidAtTime(time.Time, root.TrustedMaterial) bool { return true }
func (keyContent) Certificate() *x509.Certificate                   { return nil }
func (keyContent) Intermediates() []*x509.Certificate               { return nil }
func (keyContent) PublicKey() verify.PublicKeyProvider              { return keyHint{} }

type keyHint struct{}

func (keyHint) Hint() string { return "" }
