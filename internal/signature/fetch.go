// Package signature verifies the Sigstore signatures of images for ImageGuard's signature rules:
// cosign's legacy sha256-<digest>.sig tag and Sigstore bundles that refer to the image (OCI 1.1
// referrers, or the referrers tag schema where the registry has no referrers API), verified with
// sigstore-go against the policy's keys or against its trust root and keyless identities. Verdicts
// are cached per namespace, digest and authority set.
package signature

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/sigstore/sigstore-go/pkg/bundle"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/registry"
)

// Bounds on what is read of a registry's signatures: the count of each kind, and the size of
// each payload, read only after its descriptor says it fits.
const (
	MaxTagSignatures   = 16
	MaxBundles         = 32
	MaxPayloadBytes    = 64 << 10
	MaxBundleBytes     = 1 << 20
	bundleMediaTypeSub = "application/vnd.dev.sigstore.bundle"
	emptyMediaType     = "application/vnd.oci.empty.v1+json"
)

// Annotations of cosign's signature tag layers.
const (
	annotationSignature   = "dev.cosignproject.cosign/signature"
	annotationCertificate = "dev.sigstore.cosign/certificate"
	annotationChain       = "dev.sigstore.cosign/chain"
	annotationBundle      = "dev.sigstore.cosign/bundle"
	annotationTimestamp   = "dev.sigstore.cosign/rfc3161timestamp"
	// annotationPredicateType is what cosign names on a bundle referrer's descriptor: the
	// predicate of its statement, CosignSignPredicate for a signature.
	annotationPredicateType = "dev.sigstore.bundle.predicateType"
)

// candidate is one signature found for a digest, not verified yet.
type candidate struct {
	source string // securityv1alpha1.SignatureSource*
	where  string // for messages: the tag and layer, or the referrer's digest
	// legacy is set for a signature tag's layer; bundle for a Sigstore bundle.
	legacy *legacySignature
	bundle *bundle.Bundle
	// broken says why a candidate that was found could not be read as a signature.
	broken error
}

// found is what a registry holds of a digest's signatures.
type found struct {
	candidates []candidate
	// readErr is the first read that failed (other than "none there"): the signatures it would
	// have given are unknown.
	readErr error
}

// fetch reads the signatures of repo@digest: the signature tag's layers and the Sigstore bundles
// among its referrers, with the keychain's credentials.
func fetch(ctx context.Context, reg *registry.Client, repo, digest string, keychain authn.Keychain) found {
	var out found
	ref, err := reg.ParseReference(repo + "@" + digest)
	if err != nil {
		out.readErr = err
		return out
	}
	d, ok := ref.(name.Digest)
	if !ok {
		out.readErr = fmt.Errorf("%s is not a digest reference", digest)
		return out
	}
	opts := reg.RemoteOptions(ctx, d, keychain)
	tagged, err := fetchTag(d, opts)
	out.candidates = append(out.candidates, tagged...)
	if err != nil {
		out.readErr = err
	}
	bundles, err := fetchBundles(d, opts)
	out.candidates = append(out.candidates, bundles...)
	if err != nil && out.readErr == nil {
		out.readErr = err
	}
	return out
}

// notFound reports whether err is the registry saying there is no such manifest.
func notFound(err error) bool {
	var terr *transport.Error
	return errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound
}

// fetchTag reads cosign's sha256-<hex>.sig tag: one candidate per layer (at most
// MaxTagSignatures); no tag is no candidate.
func fetchTag(d name.Digest, opts []remote.Option) ([]candidate, error) {
	tag := d.Context().Tag(strings.Replace(d.DigestStr(), ":", "-", 1) + ".sig")
	img, err := remote.Image(tag, opts...)
	if err != nil {
		if notFound(err) {
			return nil, nil
		}
		return nil, registry.Classify(fmt.Errorf("reading signature tag %s: %w", tag.TagStr(), err))
	}
	m, err := img.Manifest()
	if err != nil {
		if notFound(err) {
			return nil, nil
		}
		return nil, registry.Classify(fmt.Errorf("reading signature tag %s: %w", tag.TagStr(), err))
	}
	var out []candidate
	for i, layer := range m.Layers {
		if i == MaxTagSignatures {
			out = append(out, candidate{source: securityv1alpha1.SignatureSourceTag, where: tag.TagStr(),
				broken: fmt.Errorf("more than %d signatures: the rest are not read", MaxTagSignatures)})
			break
		}
		c := candidate{source: securityv1alpha1.SignatureSourceTag, where: fmt.Sprintf("%s layer %d", tag.TagStr(), i)}
		payload, err := readBlob(d.Context(), layer, MaxPayloadBytes, opts)
		if err != nil {
			c.broken = err
			if registry.KindOf(err) != registry.KindUnsupported {
				return out, err
			}
		} else {
			c.legacy, c.broken = parseLegacy(payload, layer.Annotations)
		}
		out = append(out, c)
	}
	return out, nil
}

// fetchBundles reads the Sigstore bundles among d's referrers (go-containerregistry falls back to
// the referrers tag schema when the registry has no referrers API).
func fetchBundles(d name.Digest, opts []remote.Option) ([]candidate, error) {
	idx, err := remote.Referrers(d, opts...)
	if err != nil {
		if notFound(err) {
			return nil, nil
		}
		return nil, registry.Classify(fmt.Errorf("listing the referrers of %s: %w", d.DigestStr(), err))
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, registry.Classify(fmt.Errorf("listing the referrers of %s: %w", d.DigestStr(), err))
	}
	var out []candidate
	inspected := 0
	for _, desc := range im.Manifests {
		// cosign names the bundle in artifactType; registries that do not keep artifactType give
		// the config's media type, the empty one for a bundle.
		if !strings.HasPrefix(desc.ArtifactType, bundleMediaTypeSub) && desc.ArtifactType != emptyMediaType && desc.ArtifactType != "" {
			continue // an SBOM, a VEX document, another tool's artifact
		}
		if p, ok := desc.Annotations[annotationPredicateType]; ok && p != CosignSignPredicate {
			// An attestation (provenance, SBOM, VEX): it could not verify as a signature, so
			// it takes none of the bound. A descriptor that lies only hides its own bundle.
			continue
		}
		if inspected++; inspected > MaxBundles {
			out = append(out, candidate{source: securityv1alpha1.SignatureSourceReferrer, where: d.DigestStr(),
				broken: fmt.Errorf("more than %d Sigstore bundles: the rest are not read", MaxBundles)})
			break
		}
		c := candidate{source: securityv1alpha1.SignatureSourceReferrer, where: "referrer " + desc.Digest.String()}
		b, err := readBundle(d, desc, opts)
		if err != nil && registry.KindOf(err) != registry.KindUnsupported {
			return out, err
		}
		if b == nil && err == nil {
			continue // an artifact of another kind
		}
		c.bundle, c.broken = b, err
		out = append(out, c)
	}
	return out, nil
}

// readBundle reads the bundle of referrer desc: its manifest's one bundle layer.
func readBundle(d name.Digest, desc v1.Descriptor, opts []remote.Option) (*bundle.Bundle, error) {
	img, err := remote.Image(d.Context().Digest(desc.Digest.String()), opts...)
	if err != nil {
		return nil, registry.Classify(fmt.Errorf("reading referrer %s: %w", desc.Digest, err))
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, registry.Classify(fmt.Errorf("reading referrer %s: %w", desc.Digest, err))
	}
	if m.Subject == nil || m.Subject.Digest.String() != d.DigestStr() {
		return nil, registry.Errorf(registry.KindUnsupported, "referrer %s does not refer to %s", desc.Digest, d.DigestStr())
	}
	if len(m.Layers) != 1 || !strings.HasPrefix(string(m.Layers[0].MediaType), bundleMediaTypeSub) {
		return nil, nil // not a Sigstore bundle
	}
	data, err := readBlob(d.Context(), m.Layers[0], MaxBundleBytes, opts)
	if err != nil {
		return nil, err
	}
	b := &bundle.Bundle{}
	if err := b.UnmarshalJSON(data); err != nil {
		return nil, registry.Errorf(registry.KindUnsupported, "referrer %s: not a Sigstore bundle: %v", desc.Digest, err)
	}
	return b, nil
}

// readBlob reads the blob of desc from repo, refusing it before any byte when its descriptor is
// larger than limit; go-containerregistry checks the bytes against the digest.
func readBlob(repo name.Repository, desc v1.Descriptor, limit int64, opts []remote.Option) ([]byte, error) {
	if desc.Size > limit || desc.Size < 0 {
		return nil, registry.Errorf(registry.KindUnsupported, "blob %s is %d bytes, over the %d a signature may take", desc.Digest, desc.Size, limit)
	}
	layer, err := remote.Layer(repo.Digest(desc.Digest.String()), opts...)
	if err != nil {
		return nil, registry.Classify(err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		return nil, registry.Classify(fmt.Errorf("reading blob %s: %w", desc.Digest, err))
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, registry.Classify(fmt.Errorf("reading blob %s: %w", desc.Digest, err))
	}
	if int64(len(data)) != desc.Size {
		return nil, registry.Errorf(registry.KindUnsupported, "blob %s is not the %d bytes its descriptor says", desc.Digest, desc.Size)
	}
	return data, nil
}

// legacySignature is one layer of a signature tag: the simple-signing payload, its signature, and
// what cosign attached (certificate and chain, the Rekor bundle, an RFC 3161 timestamp).
type legacySignature struct {
	payload, signature []byte
	certPEM, chainPEM  []byte
	rekor              *rekorBundle
	timestamp          []byte
}

// rekorBundle is cosign's dev.sigstore.cosign/bundle annotation: Rekor's signed entry timestamp
// and the entry it signs.
type rekorBundle struct {
	SignedEntryTimestamp []byte `json:"SignedEntryTimestamp"`
	Payload              struct {
		Body           string `json:"body"`
		IntegratedTime int64  `json:"integratedTime"`
		LogIndex       int64  `json:"logIndex"`
		LogID          string `json:"logID"`
	} `json:"Payload"`
}

// parseLegacy reads a signature tag layer's annotations.
func parseLegacy(payload []byte, annotations map[string]string) (*legacySignature, error) {
	sig, err := base64.StdEncoding.DecodeString(annotations[annotationSignature])
	if err != nil || len(sig) == 0 {
		return nil, errors.New("layer has no base64 signature annotation")
	}
	l := &legacySignature{payload: payload, signature: sig,
		certPEM: []byte(annotations[annotationCertificate]), chainPEM: []byte(annotations[annotationChain])}
	if b := annotations[annotationBundle]; b != "" {
		l.rekor = &rekorBundle{}
		if err := json.Unmarshal([]byte(b), l.rekor); err != nil {
			return nil, fmt.Errorf("malformed Rekor bundle annotation: %w", err)
		}
	}
	if t := annotations[annotationTimestamp]; t != "" {
		var ts struct {
			SignedRFC3161Timestamp []byte `json:"SignedRFC3161Timestamp"`
		}
		if err := json.Unmarshal([]byte(t), &ts); err != nil {
			return nil, fmt.Errorf("malformed timestamp annotation: %w", err)
		}
		l.timestamp = ts.SignedRFC3161Timestamp
	}
	return l, nil
}
