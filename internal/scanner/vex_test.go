package scanner_test

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
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

// VEX statements remove the findings they state do not affect the image, exactly as `trivy image
// --vex` does for the same reference (every case compared with Trivy's own image scan: its name
// for the image, the digest the reference resolves to, the architecture), and say what they
// removed; statements for another image, another name of it, or another version remove nothing.
func TestMatchVEXEqualsTrivyImage(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	host := f.reg.Host()
	debian := debianImage(t)
	tagged, digest := f.reg.Push(t, "vex/debian", "1.0", debian)
	// The same image under another name, analysed first: its inventory is kept under that name.
	_, _ = f.reg.Push(t, "vex/other", "1.0", debian)
	if _, _, err := f.scanner.Inventory(ctx, scanner.ImageRef{Repository: host + "/vex/other", Digest: digest.String()}); err != nil {
		t.Fatal(err)
	}
	arm := must(testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: "arm64"},
		must(testutil.LayerFromFiles(map[string][]byte{"etc/debian_version": []byte("12.11\n")}))))
	multi, index := f.reg.PushIndex(t, "vex/multi", "1.0", must(testutil.IndexFromImages(debian, arm)))

	image := "pkg:oci/debian@" + digest.String()
	purlOf := func(inv *scanner.Inventory, name string) string {
		for _, p := range inv.Packages {
			if p.Name == name && p.Identifier.PURL != nil {
				return p.Identifier.PURL.String()
			}
		}
		t.Fatalf("no package %s", name)
		return ""
	}
	inv, _, err := f.scanner.Inventory(ctx, scanner.ImageRef{Repository: host + "/vex/debian", Digest: digest.String()})
	if err != nil {
		t.Fatal(err)
	}
	openssl := purlOf(inv, "openssl")
	dir := t.TempDir()
	for caseName, tc := range map[string]struct {
		ref            string // the reference scanned (default: vex/debian:1.0)
		doc            string
		wantSuppressed []string // id package
	}{
		"OpenVEX, the image": {
			doc:            openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_in_execute_path", image),
			wantSuppressed: []string{"CVE-2026-2001 libssl3", "CVE-2026-2001 openssl"},
		},
		"OpenVEX, the image with its architecture and repository": {
			doc:            openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_in_execute_path", image+"?arch=amd64&repository_url="+host+"/vex/debian"),
			wantSuppressed: []string{"CVE-2026-2001 libssl3", "CVE-2026-2001 openssl"},
		},
		"OpenVEX, the image on another architecture": {
			doc: openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_in_execute_path", image+"?arch=arm64"),
		},
		"OpenVEX, the image under the other name it was analysed as": {
			doc: openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_in_execute_path", "pkg:oci/other@"+digest.String()),
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
		"OpenVEX, an index by its digest": {
			ref:            multi,
			doc:            openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_in_execute_path", "pkg:oci/multi@"+index.String()),
			wantSuppressed: []string{"CVE-2026-2001 libssl3", "CVE-2026-2001 openssl"},
		},
		"OpenVEX, an index's image by its own digest": {
			ref: multi,
			doc: openVEX("CVE-2026-2001", "not_affected", "vulnerable_code_not_in_execute_path", "pkg:oci/multi@"+digest.String()),
		},
		"CSAF, the package": {
			doc:            csafVEX("CVE-2026-2001", openssl),
			wantSuppressed: []string{"CVE-2026-2001 openssl"},
		},
		"CSAF, another version": {
			doc: csafVEX("CVE-2026-2001", "pkg:deb/debian/openssl@3.0.17-1~deb12u1?distro=debian-12.11"),
		},
	} {
		t.Run(caseName, func(t *testing.T) {
			g := NewWithT(t)
			file := filepath.Join(dir, caseName+".json")
			g.Expect(os.WriteFile(file, []byte(tc.doc), 0o600)).To(Succeed())
			ref := cmp.Or(tc.ref, tagged)
			parsed, err := name.ParseReference(ref, name.Insecure)
			g.Expect(err).NotTo(HaveOccurred())
			asked := digest.String()
			if tc.ref == multi {
				asked = index.String()
			}
			inv, _, err := f.scanner.Inventory(ctx, scanner.ImageRef{Repository: parsed.Context().RegistryStr() + "/" + parsed.Context().RepositoryStr(), Digest: asked})
			g.Expect(err).NotTo(HaveOccurred())
			all, err := f.scanner.Match(ctx, inv)
			g.Expect(err).NotTo(HaveOccurred())
			res, err := f.scanner.MatchVEX(ctx, inv, scanner.VEXOptions{Files: []string{file},
				Image: scanner.ImageName{Repository: parsed.Context().Name(), Digest: asked}})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(cliFields(res.Findings)).To(ConsistOf(trivyImageVEX(ctx, t, f, ref, []string{file})))
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
		res, err := f.scanner.MatchVEX(ctx, inv, scanner.VEXOptions{Files: []string{file},
			Image: scanner.ImageName{Repository: host + "/vex/debian", Digest: digest.String()}})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res.Suppressed).To(ConsistOf(scanner.Suppressed{ID: "CVE-2026-2002", Package: "zlib1g",
			InstalledVersion: "1:1.2.13.dfsg-1", Severity: "MEDIUM", Target: res.Findings[0].Target,
			Status: "not_affected", Justification: "inline_mitigations_already_exist", Source: file}))
	})

	t.Run("documents that cannot be applied are errors, never a crash or a hang", func(t *testing.T) {
		write := func(name, doc string) string {
			file := filepath.Join(dir, name)
			if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
				t.Fatal(err)
			}
			return file
		}
		fifo := filepath.Join(dir, "fifo")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		huge := filepath.Join(dir, "huge.json")
		if err := os.WriteFile(huge, make([]byte, scanner.MaxVEXBytes+1), 0o600); err != nil {
			t.Fatal(err)
		}
		csafOK := csafVEX("CVE-2026-2001", openssl)
		for file, want := range map[string]string{
			write("bad.json", `{"hello": "world"}`):                                                                             "unable to decode VEX",
			write("cdx.json", `{"bomFormat": "CycloneDX", "specVersion": "1.5", "vulnerabilities": []}`):                        "CycloneDX VEX can be used with CycloneDX SBOM",
			write("csaf-no-cve.json", strings.Replace(csafOK, `"cve": "CVE-2026-2001", `, "", 1)):                               "has no cve",
			write("csaf-null.json", strings.Replace(csafOK, `"vulnerabilities": [{`, `"vulnerabilities": [null, {`, 1)):         "has no cve",
			write("csaf-no-tree.json", `{"document": {"category": "csaf_vex"}, "vulnerabilities": [{"cve": "CVE-2026-2001"}]}`): "no product_tree",
			fifo:                              "not a regular file",
			dir:                               "not a regular file",
			huge:                              "more than the",
			filepath.Join(dir, "absent.json"): "no such file",
			"oci":                             "a VEX file path is expected",
		} {
			g := NewWithT(t)
			_, err := f.scanner.MatchVEX(ctx, inv, scanner.VEXOptions{Files: []string{file}})
			g.Expect(err).To(MatchError(ContainSubstring(want)), file)
		}
	})
}

// A lattice of dependencies, which Trivy's VEX search would walk path by path for minutes, is
// refused with an error.
func TestMatchVEXRefusesAPathExplosion(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	ctx := testContext(t)
	inv, _, err := f.scanner.Inventory(ctx, f.push(t, "vex/lattice", debianImage(t)))
	g.Expect(err).NotTo(HaveOccurred())
	// zlib1g under 40 layers of two packages, each depending on both of the layer below: 2^40 paths.
	below := []string{}
	for _, p := range inv.Packages {
		if p.Name == "zlib1g" {
			below = []string{p.ID}
		}
	}
	g.Expect(below).NotTo(BeEmpty())
	for layer := range 40 {
		var ids []string
		for i := range 2 {
			id := fmt.Sprintf("lattice-%d-%d@1.0", layer, i)
			inv.Packages = append(inv.Packages, ftypes.Package{ID: id, Name: fmt.Sprintf("lattice-%d-%d", layer, i), Version: "1.0",
				SrcName: "lattice", SrcVersion: "1.0", DependsOn: slices.Clone(below)})
			ids = append(ids, id)
		}
		below = ids
	}
	file := filepath.Join(t.TempDir(), "image.json")
	g.Expect(os.WriteFile(file, []byte(openVEX("CVE-2026-2002", "not_affected", "vulnerable_code_not_in_execute_path", "pkg:oci/lattice@"+inv.Digest)), 0o600)).To(Succeed())
	_, err = f.scanner.MatchVEX(ctx, inv, scanner.VEXOptions{Files: []string{file}})
	g.Expect(err).To(MatchError(ContainSubstring("reaches the image by more than")))
}
