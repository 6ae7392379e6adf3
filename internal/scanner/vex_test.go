package scanner_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/scanner"
)

// openVEX is an OpenVEX document of one statement.
func openVEX(vuln, status, justification string, product string, subcomponents ...string) string {
	subs := ""
	for i, s := range subcomponents {
		if i > 0 {
			subs += ","
		}
		subs += fmt.Sprintf(`{"@id": %q}`, s)
	}
	return fmt.Sprintf(`{
  "@context": "https://openvex.dev/ns/v0.2.0",
  "@id": "https://example.com/vex/test-1",
  "author": "ImageGuard tests",
  "timestamp": "2026-11-01T00:00:00Z",
  "version": 1,
  "statements": [{
    "vulnerability": {"name": %q},
    "products": [{"@id": %q, "subcomponents": [%s]}],
    "status": %q,
    "justification": %q
  }]
}`, vuln, product, subs, status, justification)
}

// csafVEX is a CSAF VEX document stating vuln known_not_affected in the package purl.
func csafVEX(vuln, purl string) string {
	return fmt.Sprintf(`{
  "document": {
    "category": "csaf_vex", "csaf_version": "2.0", "title": "test",
    "publisher": {"category": "vendor", "name": "ImageGuard tests", "namespace": "https://example.com"},
    "tracking": {"id": "test-1", "status": "final", "version": "1",
      "initial_release_date": "2026-11-01T00:00:00Z", "current_release_date": "2026-11-01T00:00:00Z",
      "revision_history": [{"date": "2026-11-01T00:00:00Z", "number": "1", "summary": "first"}]}
  },
  "product_tree": {"branches": [{"category": "product_version", "name": "the package",
    "product": {"name": "the package", "product_id": "PKG-1", "product_identification_helper": {"purl": %q}}}]},
  "vulnerabilities": [{"cve": %q, "product_status": {"known_not_affected": ["PKG-1"]},
    "flags": [{"label": "vulnerable_code_not_in_execute_path", "product_ids": ["PKG-1"]}]}]
}`, purl, vuln)
}

// VEX statements remove the findings they state do not affect the image, exactly as Trivy's
// own `--vex` does (every case compared with Trivy's result.Filter over the same documents),
// and say what they removed; statements for another image or another version remove nothing.
func TestMatchVEXEqualsTrivy(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	ref := f.push(t, "vex/debian", debianImage(t))
	inv, _, err := f.scanner.Inventory(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	image := "pkg:oci/debian@" + ref.Digest
	purlOf := func(name string) string {
		for _, p := range inv.Packages {
			if p.Name == name && p.Identifier.PURL != nil {
				return p.Identifier.PURL.String()
			}
		}
		t.Fatalf("no package %s", name)
		return ""
	}
	openssl := purlOf("openssl")
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		doc            string
		wantSuppressed []string // id package
	}{
		"OpenVEX, the image": {
			doc:            openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_in_execute_path", image),
			wantSuppressed: []string{"CVE-2026-2001 libssl3", "CVE-2026-2001 openssl"},
		},
		"OpenVEX, one package of the image": {
			doc:            openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_present", image, openssl),
			wantSuppressed: []string{"CVE-2026-2001 openssl"},
		},
		"OpenVEX, fixed": {
			doc:            openVEX("CVE-2026-2002", "fixed", "", image),
			wantSuppressed: []string{"CVE-2026-2002 zlib1g"},
		},
		"OpenVEX, under investigation": {
			doc: openVEX("CVE-2026-2001", "under_investigation", "", image),
		},
		"OpenVEX, another image": {
			doc: openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_in_execute_path", "pkg:oci/debian@sha256:"+fmt.Sprintf("%064d", 0)),
		},
		"OpenVEX, another version of the package": {
			doc: openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_present", image, "pkg:deb/debian/openssl@3.0.17-1~deb12u1"),
		},
		"CSAF, the package": {
			doc:            csafVEX("CVE-2026-2001", openssl),
			wantSuppressed: []string{"CVE-2026-2001 openssl"},
		},
		"CSAF, another version": {
			doc: csafVEX("CVE-2026-2001", "pkg:deb/debian/openssl@3.0.17-1~deb12u1?distro=debian-12.11"),
		},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			file := filepath.Join(dir, name+".json")
			g.Expect(os.WriteFile(file, []byte(tc.doc), 0o600)).To(Succeed())
			all, err := f.scanner.Match(ctx, inv)
			g.Expect(err).NotTo(HaveOccurred())
			res, err := f.scanner.MatchVEX(ctx, inv, []string{file})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(res.Findings).To(Equal(trivyScanTargetVEX(ctx, t, f, inv, []string{file})))
			var suppressed []string
			for _, s := range res.Suppressed {
				suppressed = append(suppressed, s.ID+" "+s.Package)
				g.Expect(s.Source).To(Equal(file))
				g.Expect(s.Status).To(BeElementOf("not_affected", "fixed"))
			}
			g.Expect(suppressed).To(Equal(tc.wantSuppressed))
			g.Expect(len(res.Findings)+len(res.Suppressed)).To(Equal(len(all.Findings)), "every finding is either kept or suppressed")
			for _, s := range res.Suppressed {
				g.Expect(slices.ContainsFunc(res.Findings, func(f scanner.Finding) bool {
					return f.ID == s.ID && f.Package == s.Package
				})).To(BeFalse(), "a suppressed finding is not in the findings")
			}
		})
	}

	t.Run("a statement's justification is kept", func(t *testing.T) {
		g := NewWithT(t)
		file := filepath.Join(dir, "justification.json")
		g.Expect(os.WriteFile(file, []byte(openVEX("CVE-2026-2002", "not_affected", "inline_mitigations_already_exist", image)), 0o600)).To(Succeed())
		res, err := f.scanner.MatchVEX(ctx, inv, []string{file})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res.Suppressed).To(ConsistOf(scanner.Suppressed{ID: "CVE-2026-2002", Package: "zlib1g",
			InstalledVersion: "1:1.2.13.dfsg-1", Severity: "MEDIUM", Target: res.Findings[0].Target,
			Status: "not_affected", Justification: "inline_mitigations_already_exist", Source: file}))
	})

	t.Run("a document that is no VEX, and CycloneDX VEX on an image, are errors", func(t *testing.T) {
		g := NewWithT(t)
		bad := filepath.Join(dir, "bad.json")
		g.Expect(os.WriteFile(bad, []byte(`{"hello": "world"}`), 0o600)).To(Succeed())
		_, err := f.scanner.MatchVEX(ctx, inv, []string{bad})
		g.Expect(err).To(MatchError(ContainSubstring("unable to decode VEX")))
		cdx := filepath.Join(dir, "cdx.json")
		g.Expect(os.WriteFile(cdx, []byte(`{"bomFormat": "CycloneDX", "specVersion": "1.5", "vulnerabilities": []}`), 0o600)).To(Succeed())
		_, err = f.scanner.MatchVEX(ctx, inv, []string{cdx})
		g.Expect(err).To(MatchError(ContainSubstring("CycloneDX VEX can be used with CycloneDX SBOM")))
	})
}
