package testutil

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	intoto "github.com/in-toto/attestation/go/v1"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// Media types and annotations of cosign's signatures, as cosign writes them.
const (
	SimpleSigningMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	BundleMediaType        = "application/vnd.dev.sigstore.bundle.v0.3+json"
	CosignSignPredicate    = "https://sigstore.dev/cosign/sign/v1"
)

// SigningKey is an ECDSA P-256 key pair, as `cosign generate-key-pair` makes.
type SigningKey struct {
	Private *ecdsa.PrivateKey
	// PublicPEM is the public key as cosign.pub holds it.
	PublicPEM string
}

// NewSigningKey makes a key pair.
func NewSigningKey(t testing.TB) *SigningKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &SigningKey{Private: k, PublicPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
}

// SimpleSigningPayload is cosign's payload for repo@digest.
func SimpleSigningPayload(t testing.TB, repo string, digest v1.Hash) []byte {
	t.Helper()
	d, err := name.NewDigest(repo+"@"+digest.String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	data, err := payload.Cosign{Image: d}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// SignPayload signs data with the key (ECDSA over its SHA-256, as cosign signs).
func (k *SigningKey) SignPayload(t testing.TB, data []byte) []byte {
	t.Helper()
	s, err := signature.LoadECDSASigner(k.Private, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := s.SignMessage(strings.NewReader(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// TagSignature is one layer of a signature tag: a payload and its annotations.
type TagSignature struct {
	Payload     []byte
	Annotations map[string]string
}

// KeyTagSignature is cosign's legacy signature of repo@digest by k.
func (k *SigningKey) KeyTagSignature(t testing.TB, repo string, digest v1.Hash) TagSignature {
	p := SimpleSigningPayload(t, repo, digest)
	return TagSignature{Payload: p, Annotations: map[string]string{
		"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(k.SignPayload(t, p)),
	}}
}

// KeylessTagSignature is cosign's legacy keyless signature of repo@digest by the test Sigstore:
// the simple-signing payload signed with a Fulcio certificate for identity and oidcIssuer, the
// certificate and its chain, the Rekor entry's signed entry timestamp (cosign's bundle
// annotation) and an RFC 3161 timestamp, in the annotations cosign writes.
func KeylessTagSignature(t testing.TB, vs *ca.VirtualSigstore, identity, oidcIssuer, repo string, digest v1.Hash) TagSignature {
	t.Helper()
	p := SimpleSigningPayload(t, repo, digest)
	e, err := vs.SignAtTime(identity, oidcIssuer, p, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := e.SignatureContent()
	if err != nil {
		t.Fatal(err)
	}
	vc, err := e.VerificationContent()
	if err != nil {
		t.Fatal(err)
	}
	entries, err := e.TlogEntries()
	if err != nil || len(entries) != 1 {
		t.Fatalf("the test Sigstore made %d log entries: %v", len(entries), err)
	}
	// The entry keeps its signed entry timestamp to itself: the log signs the same payload again.
	tle := entries[0].TransparencyLogEntry()
	rp := tlog.RekorPayload{Body: base64.StdEncoding.EncodeToString(tle.GetCanonicalizedBody()), IntegratedTime: tle.GetIntegratedTime(),
		LogIndex: tle.GetLogIndex(), LogID: hex.EncodeToString(tle.GetLogId().GetKeyId())}
	set, err := vs.RekorSignPayload(rp)
	if err != nil {
		t.Fatal(err)
	}
	rekor, err := json.Marshal(map[string]any{"SignedEntryTimestamp": set, "Payload": rp})
	if err != nil {
		t.Fatal(err)
	}
	tss, err := e.Timestamps()
	if err != nil || len(tss) != 1 {
		t.Fatalf("the test Sigstore made %d timestamps: %v", len(tss), err)
	}
	ts, err := json.Marshal(map[string][]byte{"SignedRFC3161Timestamp": tss[0]})
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, c := range vs.FulcioCertificateAuthorities() {
		fca, ok := c.(*root.FulcioCertificateAuthority)
		if !ok {
			t.Fatal("the test Sigstore's CA is not a Fulcio CA")
		}
		for _, inter := range fca.Intermediates {
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Raw})...)
		}
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fca.Root.Raw})...)
	}
	return TagSignature{Payload: p, Annotations: map[string]string{
		"dev.cosignproject.cosign/signature":   base64.StdEncoding.EncodeToString(sc.MessageSignatureContent().Signature()),
		"dev.sigstore.cosign/certificate":      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: vc.Certificate().Raw})),
		"dev.sigstore.cosign/chain":            string(chain),
		"dev.sigstore.cosign/bundle":           string(rekor),
		"dev.sigstore.cosign/rfc3161timestamp": string(ts),
	}}
}

// PushTagSignatures writes sigs as the signature tag of repo@digest (sha256-<hex>.sig), as cosign
// does: one simple-signing layer per signature.
func (r *Registry) PushTagSignatures(t testing.TB, repo string, digest v1.Hash, sigs ...TagSignature) {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	for _, s := range sigs {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(s.Payload, SimpleSigningMediaType), Annotations: s.Annotations})
		if err != nil {
			t.Fatal(err)
		}
	}
	r.Push(t, repo, strings.Replace(digest.String(), ":", "-", 1)+".sig", img)
}

// CosignSignStatement is the in-toto statement cosign v3 signs for an image: its digest as the
// subject, of predicate type https://sigstore.dev/cosign/sign/v1.
func CosignSignStatement(t testing.TB, digest v1.Hash, predicateType string) []byte {
	t.Helper()
	st := &intoto.Statement{
		Type:          intoto.StatementTypeUri,
		Subject:       []*intoto.ResourceDescriptor{{Digest: map[string]string{digest.Algorithm: digest.Hex}}},
		PredicateType: predicateType,
		Predicate:     &structpb.Struct{},
	}
	data, err := protojson.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// keypair is a SigningKey as sigstore-go's sign.Keypair.
type keypair struct {
	*sign.EphemeralKeypair
	k *SigningKey
}

// KeyBundle is a Sigstore bundle of a DSSE envelope of statement signed by k (cosign v3 with
// --key: no certificate, no transparency log).
func (k *SigningKey) KeyBundle(t testing.TB, statement []byte) []byte {
	t.Helper()
	kp, err := newKeypair(k)
	if err != nil {
		t.Fatal(err)
	}
	b, err := sign.Bundle(&sign.DSSEData{Data: statement, PayloadType: "application/vnd.in-toto+json"}, kp, sign.BundleOptions{Context: context.Background()})
	if err != nil {
		t.Fatal(err)
	}
	data, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func newKeypair(k *SigningKey) (*keypair, error) {
	e, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		return nil, err
	}
	return &keypair{EphemeralKeypair: e, k: k}, nil
}

func (p *keypair) GetPublicKey() crypto.PublicKey { return p.k.Private.Public() }
func (p *keypair) GetPublicKeyPem() (string, error) {
	return p.k.PublicPEM, nil
}
func (p *keypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	s, err := signature.LoadECDSASigner(p.k.Private, crypto.SHA256)
	if err != nil {
		return nil, nil, err
	}
	sig, err := s.SignMessage(strings.NewReader(string(data)))
	return sig, nil, err
}

// CosignBundleAnnotations are the annotations cosign v3 gives a bundle referrer's manifest (and
// so its descriptor among the referrers) for a DSSE statement of predicateType.
func CosignBundleAnnotations(predicateType string) map[string]string {
	return map[string]string{"dev.sigstore.bundle.content": "dsse-envelope", "dev.sigstore.bundle.predicateType": predicateType}
}

// PushBundle attaches a Sigstore bundle to repo@digest as cosign v3 does: an OCI manifest of an
// empty config and one bundle layer, with annotations (nil: none, as a registry that drops them
// gives), whose subject is the image (the registry lists it among the image's referrers, or
// go-containerregistry updates the referrers tag schema's index).
func (r *Registry) PushBundle(t testing.TB, repo string, subject v1.Descriptor, bundleJSON []byte, annotations map[string]string) v1.Hash {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, "application/vnd.oci.empty.v1+json")
	if annotations != nil {
		var ok bool
		if img, ok = mutate.Annotations(img, annotations).(v1.Image); !ok {
			t.Fatal("mutate.Annotations of an image is not an image")
		}
	}
	img, err := mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(bundleJSON, BundleMediaType)})
	if err != nil {
		t.Fatal(err)
	}
	withSubject, ok := mutate.Subject(img, subject).(v1.Image)
	if !ok {
		t.Fatal("mutate.Subject of an image is not an image")
	}
	d, err := withSubject.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewDigest(r.host+"/"+repo+"@"+d.String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, withSubject, r.setupOptions()...); err != nil {
		t.Fatalf("push bundle %s: %v", ref, err)
	}
	return d
}

// BundleJSON marshals a protobuf bundle as its JSON form.
func BundleJSON(t testing.TB, b *protobundle.Bundle) []byte {
	t.Helper()
	data, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TrustRootJSON is vs's trusted_root.json. The test Sigstore's log IDs are the hex of its key's
// digest where a trusted root holds the digest itself: they are decoded, or the round trip through
// JSON would name another log.
func TrustRootJSON(t testing.TB, vs *ca.VirtualSigstore) []byte {
	t.Helper()
	logs := map[string]*root.TransparencyLog{}
	for id, l := range vs.RekorLogs() {
		raw, err := hex.DecodeString(id)
		if err != nil {
			t.Fatal(err)
		}
		c := *l
		c.ID = raw
		logs[id] = &c
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, vs.FulcioCertificateAuthorities(), nil, vs.TimestampingAuthorities(), logs)
	if err != nil {
		t.Fatal(err)
	}
	data, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// KeylessBundle is the test Sigstore's signature of statement (a DSSE envelope, a Rekor entry with
// its inclusion proof, an RFC 3161 timestamp) as a v0.3 bundle, the form cosign v3 attaches.
func KeylessBundle(t testing.TB, vs *ca.VirtualSigstore, identity, oidcIssuer string, statement []byte) []byte {
	t.Helper()
	e, err := vs.AttestAtTime(identity, oidcIssuer, statement, time.Now().Add(time.Minute), true)
	if err != nil {
		t.Fatal(err)
	}
	vc, _ := e.VerificationContent()
	sc, _ := e.SignatureContent()
	env := sc.EnvelopeContent().RawEnvelope()
	payload, _ := base64.StdEncoding.DecodeString(env.Payload)
	sig, _ := base64.StdEncoding.DecodeString(env.Signatures[0].Sig)
	entries, _ := e.TlogEntries()
	tss, _ := e.Timestamps()
	b := &protobundle.Bundle{
		MediaType: BundleMediaType,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content: &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: vc.Certificate().Raw}},
		},
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{
			Payload: payload, PayloadType: env.PayloadType, Signatures: []*protodsse.Signature{{Sig: sig}},
		}},
	}
	for _, entry := range entries {
		b.VerificationMaterial.TlogEntries = append(b.VerificationMaterial.TlogEntries, withKind(t, entry))
	}
	for _, ts := range tss {
		if b.VerificationMaterial.TimestampVerificationData == nil {
			b.VerificationMaterial.TimestampVerificationData = &protobundle.TimestampVerificationData{}
		}
		b.VerificationMaterial.TimestampVerificationData.Rfc3161Timestamps = append(b.VerificationMaterial.TimestampVerificationData.Rfc3161Timestamps,
			&protocommon.RFC3161SignedTimestamp{SignedTimestamp: ts})
	}
	return BundleJSON(t, b)
}

// withKind is entry's proto form with the kind and version its body names (tlog.NewEntry does not
// fill them in).
func withKind(t testing.TB, entry *tlog.Entry) *protorekor.TransparencyLogEntry {
	t.Helper()
	tle := entry.TransparencyLogEntry()
	var body struct{ Kind, APIVersion string }
	if err := json.Unmarshal(tle.CanonicalizedBody, &body); err != nil {
		t.Fatal(err)
	}
	tle.KindVersion = &protorekor.KindVersion{Kind: body.Kind, Version: body.APIVersion}
	return tle
}
