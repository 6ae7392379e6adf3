package policy

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"regexp"
	"strings"
	"time"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

// SignatureVerdict is what is known of an image's signatures under one authority set.
type SignatureVerdict struct {
	Verified bool
	// Reason and Message say why no signature verified (the API's Reason* of signature checks).
	Reason, Message string
	// SignedBy names, per authority that verified, who signed.
	SignedBy []string
	// CheckedAt is when the signatures were read and verified.
	CheckedAt time.Time
}

// SignatureAuthorities is a policy's signature rule, with the namespaces of the Secrets and
// ConfigMaps it names filled in, and its identity: policies with the same authorities share
// their verdicts.
type SignatureAuthorities struct {
	// ID is a digest of the rule (keys, identities, trust root, options): the key of verdicts.
	ID   string
	Rule securityv1alpha1.SignatureRule
}

// RequireTransparencyLog is the rule's requireTransparencyLog, true when unset.
func (a *SignatureAuthorities) RequireTransparencyLog() bool {
	return a.Rule.RequireTransparencyLog == nil || *a.Rule.RequireTransparencyLog
}

// RequireSignedTimestamp is the rule's requireSignedTimestamp, true when unset.
func (a *SignatureAuthorities) RequireSignedTimestamp() bool {
	return a.Rule.RequireSignedTimestamp == nil || *a.Rule.RequireSignedTimestamp
}

// AnchoredRegExp returns re made to match whole values only, as the API documents it (sigstore-go
// would match it anywhere in the value).
func AnchoredRegExp(re string) string { return `^(?:` + re + `)$` }

// KeyAuthority is how results and reports name key i of the rule.
func (a *SignatureAuthorities) KeyAuthority(i int) string {
	k := a.Rule.Keys[i]
	if k.SecretRef != nil {
		return fmt.Sprintf("key Secret %s/%s[%s]", k.SecretRef.Namespace, k.SecretRef.Name, k.SecretRef.Key)
	}
	return fmt.Sprintf("key #%d", i+1)
}

// IdentityAuthority is how results and reports name keyless identity i of the rule.
func (a *SignatureAuthorities) IdentityAuthority(i int) string {
	id := a.Rule.Keyless[i]
	issuer, subject := id.Issuer, id.Subject
	if id.IssuerRegExp != "" {
		issuer = "~" + id.IssuerRegExp
	}
	if id.SubjectRegExp != "" {
		subject = "~" + id.SubjectRegExp
	}
	return fmt.Sprintf("keyless %s %s", issuer, subject)
}

// compileSignatures checks what can be checked of the rule without reading anything (inline
// keys parse, regular expressions compile) and returns it with its ID.
func compileSignatures(rule *securityv1alpha1.SignatureRule) (*SignatureAuthorities, error) {
	for i, k := range rule.Keys {
		if k.PublicKey == "" {
			continue
		}
		if _, err := ParsePublicKey([]byte(k.PublicKey)); err != nil {
			return nil, fmt.Errorf("signatures.keys[%d].publicKey: %w", i, err)
		}
	}
	for i, id := range rule.Keyless {
		for field, re := range map[string]string{"issuerRegExp": id.IssuerRegExp, "subjectRegExp": id.SubjectRegExp} {
			if re == "" {
				continue
			}
			// On its own first: `x)|(?:.*` compiles once wrapped, and then matches anything.
			if _, err := regexp.Compile(re); err != nil {
				return nil, fmt.Errorf("signatures.keyless[%d].%s: %w", i, field, err)
			}
			if _, err := regexp.Compile(AnchoredRegExp(re)); err != nil {
				return nil, fmt.Errorf("signatures.keyless[%d].%s: %w", i, field, err)
			}
		}
		if (id.Issuer == "") == (id.IssuerRegExp == "") || (id.Subject == "") == (id.SubjectRegExp == "") {
			return nil, fmt.Errorf("signatures.keyless[%d]: an identity sets exactly one of issuer and issuerRegExp, and of subject and subjectRegExp", i)
		}
	}
	if len(rule.Keys) == 0 && len(rule.Keyless) == 0 {
		return nil, fmt.Errorf("signatures: required, but no key or keyless identity is named")
	}
	if len(rule.Keyless) > 0 && rule.TrustRoot == nil {
		return nil, fmt.Errorf("signatures.keyless needs signatures.trustRoot")
	}
	a := &SignatureAuthorities{Rule: *rule.DeepCopy()}
	tlog, tsa := a.RequireTransparencyLog(), a.RequireSignedTimestamp()
	a.Rule.RequireTransparencyLog, a.Rule.RequireSignedTimestamp = &tlog, &tsa
	data, err := json.Marshal(a.Rule)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	a.ID = hex.EncodeToString(sum[:16])
	return a, nil
}

// ParsePublicKey parses a PEM-encoded PKIX public key (cosign's cosign.pub).
func ParsePublicKey(data []byte) (any, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM block")
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, fmt.Errorf("more than one PEM block")
	}
	if block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("PEM block is %q, not PUBLIC KEY", block.Type)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not a public key: %w", err)
	}
	return key, nil
}

// checkSignatures requires a signature that verified against one of the authorities. It judges
// the verdict the image carries (Image.Signatures); without one, the image is not verified yet:
// not evaluable (SignaturePending: admission refuses it under Enforce), never passed.
func checkSignatures(a *SignatureAuthorities) check {
	return check{rule: RuleSignatures, severity: SeverityHigh, needsReport: true, judge: func(img Image, _ time.Time) (Result, time.Time) {
		v, ok := img.Signatures[a.ID]
		switch {
		case !ok:
			return notEvaluable(ReasonSignaturePending, "signatures not verified yet"), time.Time{}
		case v.Verified:
			return pass("signed by " + strings.Join(v.SignedBy, ", ")), time.Time{}
		}
		reason := v.Reason
		if reason == "" {
			reason = securityv1alpha1.ReasonSignatureInvalid
		}
		return fail(reason, v.Message), time.Time{}
	}}
}
