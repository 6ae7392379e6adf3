package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/signature"
	"github.com/imageguard/imageguard/internal/testutil"
)

// TestVerifyCommand: imageguard verify prints the verdict a policy's signature rule gives, for a
// key and for a keyless identity with a trusted root file, and exits 1 when it does not verify.
func TestVerifyCommand(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t, testutil.WithReferrers())
	key := testutil.NewSigningKey(t)
	vs, err := ca.NewVirtualSigstore()
	g.Expect(err).NotTo(HaveOccurred())
	push := func(repo string) v1.Descriptor {
		layer, err := testutil.LayerFromFiles(map[string][]byte{"etc/" + repo: []byte(repo)})
		g.Expect(err).NotTo(HaveOccurred())
		img, err := testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: "amd64"}, layer)
		g.Expect(err).NotTo(HaveOccurred())
		_, d := reg.Push(t, repo, "v1", img)
		size, _ := img.Size()
		mt, _ := img.MediaType()
		return v1.Descriptor{Digest: d, Size: size, MediaType: mt}
	}
	signed := push("signed")
	reg.PushTagSignatures(t, "signed", signed.Digest, key.KeyTagSignature(t, reg.Host()+"/signed", signed.Digest))
	keyless := push("keyless")
	reg.PushBundle(t, "keyless", keyless, testutil.KeylessBundle(t, vs, "ci@example.com", "https://oidc.example.com",
		testutil.CosignSignStatement(t, keyless.Digest, signature.CosignSignPredicate)), testutil.CosignBundleAnnotations(signature.CosignSignPredicate))
	push("unsigned")

	dir := t.TempDir()
	keyFile, rootFile := filepath.Join(dir, "cosign.pub"), filepath.Join(dir, "trusted_root.json")
	g.Expect(os.WriteFile(keyFile, []byte(key.PublicPEM), 0o600)).To(Succeed())
	g.Expect(os.WriteFile(rootFile, testutil.TrustRootJSON(t, vs), 0o600)).To(Succeed())

	verify := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"verify", "--insecure-registries", reg.Host()}, args...), &out, &errOut)
		return code, out.String() + errOut.String()
	}
	code, out := verify(reg.Host()+"/signed:v1", "--key", keyFile)
	g.Expect(code).To(Equal(0), out)
	g.Expect(out).To(ContainSubstring("Verified"))
	g.Expect(out).To(ContainSubstring(signature.Fingerprint(key.Private.Public())))

	code, out = verify(reg.Host()+"/unsigned:v1", "--key", keyFile)
	g.Expect(code).To(Equal(1), out)
	g.Expect(out).To(ContainSubstring(securityv1alpha1.ReasonSignatureMissing))

	code, out = verify(reg.Host()+"/keyless:v1", "--certificate-identity-regexp", `.*@example\.com`,
		"--certificate-oidc-issuer", "https://oidc.example.com", "--trusted-root", rootFile, "-o", "json")
	g.Expect(code).To(Equal(0), out)
	var report verifyReport
	g.Expect(json.Unmarshal([]byte(out), &report)).To(Succeed())
	g.Expect(report.Verified).To(BeTrue())
	g.Expect(report.Digest).To(Equal(keyless.Digest.String()))
	g.Expect(report.SignedBy[0].Identity).To(Equal("ci@example.com (https://oidc.example.com)"))

	code, out = verify(reg.Host()+"/keyless:v1", "--certificate-identity", "mallory@example.com",
		"--certificate-oidc-issuer", "https://oidc.example.com", "--trusted-root", rootFile)
	g.Expect(code).To(Equal(1), out)
	g.Expect(out).To(ContainSubstring(securityv1alpha1.ReasonIdentityMismatch))

	code, out = verify(reg.Host() + "/signed:v1")
	g.Expect(code).To(Equal(2), out)
	code, out = verify(reg.Host()+"/keyless:v1", "--certificate-identity", "x", "--trusted-root", rootFile)
	g.Expect(code).To(Equal(2), out)
}
