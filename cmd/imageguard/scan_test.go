package main

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/vulndb"
)

const scanAdvisories = `
advisories:
- {id: CVE-2026-2001, ecosystem: debian 12, package: openssl, fixedVersion: 3.0.17-1~deb12u1, severity: HIGH, title: openssl flaw}
- {id: CVE-2026-2002, ecosystem: debian 12, package: zlib, severity: LOW}
`

// appPackages are the Debian packages of the commands' test image: one with a fixed finding in
// scanAdvisories, one with an unfixed one.
var appPackages = []testutil.DebPackage{
	{Name: "libssl3", Version: "3.0.15-1~deb12u1", Source: "openssl"},
	{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"},
}

// buildTestDB builds a Trivy DB of advisories (YAML) and returns the folder --db-path takes.
func buildTestDB(t *testing.T, advisories string) string {
	t.Helper()
	spec, err := testutil.ParseAdvisories([]byte(advisories))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := testutil.BuildDB(dir, spec); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "db")
}

// TestScanCommandMatchesTheLibrary scans a fixture image with `imageguard scan` and with the
// scanner package directly: the findings must be the same.
func TestScanCommandMatchesTheLibrary(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t)
	img, err := testutil.DebianImage("12.11", appPackages)
	g.Expect(err).NotTo(HaveOccurred())
	ref, digest := reg.Push(t, "team/app", "1.0", img)
	dbPath := buildTestDB(t, scanAdvisories)

	var stdout, stderr bytes.Buffer
	code := run([]string{"scan", ref, "--db-path", dbPath, "--insecure-registries", reg.Host(),
		"--cache-dir", t.TempDir(), "-o", "json"}, &stdout, &stderr)
	g.Expect(code).To(Equal(0), stderr.String())
	var printed scanReport
	g.Expect(json.Unmarshal(stdout.Bytes(), &printed)).To(Succeed())
	g.Expect(printed.Digest).To(Equal(digest.String()))
	g.Expect(printed.Summary).To(Equal(map[string]int{"high": 1, "low": 1}))

	client := registry.NewClient(registry.Options{InsecureHosts: []string{reg.Host()}})
	db, err := vulndb.New(vulndb.Options{LocalPath: dbPath, Log: logr.Discard()})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(db.LoadLocal()).To(Succeed())
	s, err := scanner.New(scanner.Options{CacheDir: t.TempDir()}, client, db)
	g.Expect(err).NotTo(HaveOccurred())
	_, res, err := s.Scan(context.Background(), scanner.ImageRef{Repository: reg.Host() + "/team/app", Digest: digest.String()})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(printed.Vulnerabilities).To(Equal(res.Findings))
	g.Expect(printed.Vulnerabilities).To(HaveLen(2))

	stdout.Reset()
	code = run([]string{"scan", ref, "--db-path", dbPath, "--insecure-registries", reg.Host(),
		"--cache-dir", t.TempDir()}, &stdout, &stderr)
	g.Expect(code).To(Equal(0), stderr.String())
	g.Expect(stdout.String()).To(ContainSubstring("Total: 2 (CRITICAL: 0, HIGH: 1, MEDIUM: 0, LOW: 1, UNKNOWN: 0)"))
	g.Expect(stdout.String()).To(MatchRegexp(`CVE-2026-2001\s+libssl3\s+3.0.15-1~deb12u1\s+3.0.17-1~deb12u1\s+HIGH`))
}

// An image with a jar: `imageguard scan` loads the Java DB only then (from a path, or downloaded
// and kept), and finds the jar's vulnerability as the controller does.
func TestScanCommandAnalysesJavaArchives(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t)
	var jar bytes.Buffer
	zw := zip.NewWriter(&jar)
	w, err := zw.Create("META-INF/maven/org.apache.commons/commons-text/pom.properties")
	g.Expect(err).NotTo(HaveOccurred())
	_, err = w.Write([]byte("groupId=org.apache.commons\nartifactId=commons-text\nversion=1.9\n"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(zw.Close()).To(Succeed())
	base, err := testutil.DebianImage("12.11", []testutil.DebPackage{{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"}})
	g.Expect(err).NotTo(HaveOccurred())
	layers, err := base.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	app, err := testutil.LayerFromFiles(map[string][]byte{"app/lib/commons-text-1.9.jar": jar.Bytes()})
	g.Expect(err).NotTo(HaveOccurred())
	img, err := testutil.ImageFromLayers(testutil.LinuxAMD64, append(layers, app)...)
	g.Expect(err).NotTo(HaveOccurred())
	ref, _ := reg.Push(t, "team/java", "1.0", img)
	dbPath := buildTestDB(t, scanAdvisories+`- {id: CVE-2022-42889, ecosystem: "maven::GitHub Security Advisory Maven", package: "org.apache.commons:commons-text", vulnerableVersions: [">=1.5, <1.10.0"], patchedVersions: ["1.10.0"], severity: CRITICAL}
`)
	built := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	javaDir := t.TempDir()
	g.Expect(testutil.BuildJavaDB(javaDir, built, nil)).To(Succeed())

	scan := func(args ...string) (scanReport, string) {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"scan", ref, "--db-path", dbPath, "--insecure-registries", reg.Host(), "-o", "json"}, args...), &stdout, &stderr)
		g.Expect(code).To(Equal(0), stderr.String())
		var printed scanReport
		g.Expect(json.Unmarshal(stdout.Bytes(), &printed)).To(Succeed())
		return printed, stderr.String()
	}
	ids := func(r scanReport) []string {
		var out []string
		for _, f := range r.Vulnerabilities {
			out = append(out, f.ID+" "+f.Package)
		}
		return out
	}
	want := []string{"CVE-2022-42889 org.apache.commons:commons-text", "CVE-2026-2002 zlib1g"}

	// From a path, offline.
	printed, _ := scan("--cache-dir", t.TempDir(), "--java-db-path", javaDir)
	g.Expect(ids(printed)).To(ConsistOf(want))
	g.Expect(printed.JavaArchivesNotAnalysed).To(BeZero())

	// From a repository: downloaded on the first jar, kept; the next run needs no Java DB at all.
	reg.PublishJavaDB(t, "aquasecurity/trivy-java-db", "1", built, nil)
	cache := t.TempDir()
	repo := "--java-db-repository=" + reg.Host() + "/aquasecurity/trivy-java-db:1"
	printed, _ = scan("--cache-dir", cache, repo)
	g.Expect(ids(printed)).To(ConsistOf(want))
	reg.ResetCounts()
	printed, _ = scan("--cache-dir", cache, repo)
	g.Expect(ids(printed)).To(ConsistOf(want))
	g.Expect(reg.Counts().BlobGETs).To(BeZero(), "the inventory with its jars is kept")

	// No Java DB to be had: the jar is counted, and the warning says so.
	printed, stderr := scan("--cache-dir", t.TempDir(), "--java-db-repository="+reg.Host()+"/missing/java-db:1")
	g.Expect(printed.JavaArchivesNotAnalysed).To(Equal(1))
	g.Expect(ids(printed)).To(ConsistOf("CVE-2026-2002 zlib1g"))
	g.Expect(stderr).To(And(ContainSubstring("the Java DB could not be loaded"), ContainSubstring("1 Java archives")))

	// The SBOM: with the Java DB its jar is a component; without one none is written, as an SBOM
	// cannot say that it lacks packages.
	var out, errOut bytes.Buffer
	g.Expect(run([]string{"sbom", ref, "--insecure-registries", reg.Host(), "--cache-dir", cache, repo}, &out, &errOut)).To(Equal(0), errOut.String())
	g.Expect(out.String()).To(ContainSubstring(`"purl": "pkg:maven/org.apache.commons/commons-text@1.9"`))
	out.Reset()
	errOut.Reset()
	g.Expect(run([]string{"sbom", ref, "--insecure-registries", reg.Host(), "--cache-dir", t.TempDir(),
		"--java-db-repository=" + reg.Host() + "/missing/java-db:1"}, &out, &errOut)).To(Equal(1))
	g.Expect(out.String()).To(BeEmpty())
	g.Expect(errOut.String()).To(ContainSubstring("no SBOM is written without their packages"))
}

// `imageguard sbom` after `imageguard scan` of the same image writes its SBOM from the inventory
// the scan kept: no blob is read again, and the SBOM lists the image's OS and npm packages.
func TestSBOMCommandReadsTheKeptInventory(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t)
	base, err := testutil.DebianImage("12.11", appPackages)
	g.Expect(err).NotTo(HaveOccurred())
	layers, err := base.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	img, err := testutil.NPMImage(layers, []testutil.NPMPackage{{Name: "lodash", Version: "4.17.20"}})
	g.Expect(err).NotTo(HaveOccurred())
	ref, digest := reg.Push(t, "team/web", "1.0", img)
	dbPath := buildTestDB(t, scanAdvisories)
	cache := t.TempDir()

	var stdout, stderr bytes.Buffer
	g.Expect(run([]string{"scan", ref, "--db-path", dbPath, "--insecure-registries", reg.Host(),
		"--cache-dir", cache, "-o", "json"}, &stdout, &stderr)).To(Equal(0), stderr.String())
	reg.ResetCounts()
	stdout.Reset()
	g.Expect(run([]string{"sbom", ref, "-o", "cyclonedx", "--insecure-registries", reg.Host(), "--cache-dir", cache},
		&stdout, &stderr)).To(Equal(0), stderr.String())
	g.Expect(reg.Counts().BlobGETs).To(BeZero(), "the kept inventory is used: no second analysis")
	var bom struct {
		BOMFormat string `json:"bomFormat"`
		Metadata  struct {
			Component struct {
				PURL string `json:"purl"`
			} `json:"component"`
		} `json:"metadata"`
		Components []struct {
			PURL string `json:"purl"`
		} `json:"components"`
	}
	g.Expect(json.Unmarshal(stdout.Bytes(), &bom)).To(Succeed(), stdout.String())
	g.Expect(bom.BOMFormat).To(Equal("CycloneDX"))
	g.Expect(bom.Metadata.Component.PURL).To(ContainSubstring("@" + digest.String()))
	g.Expect(bom.Components).To(ContainElements(
		HaveField("PURL", "pkg:deb/debian/libssl3@3.0.15-1~deb12u1?arch=amd64&distro=debian-12.11"),
		HaveField("PURL", "pkg:npm/lodash@4.17.20")))

	// Without a kept inventory it analyses the image itself; SPDX, tag-value.
	stdout.Reset()
	g.Expect(run([]string{"sbom", ref, "-o", "spdx", "--insecure-registries", reg.Host(), "--cache-dir", t.TempDir()},
		&stdout, &stderr)).To(Equal(0), stderr.String())
	g.Expect(stdout.String()).To(HavePrefix("SPDXVersion: SPDX-2."))
	g.Expect(stdout.String()).To(ContainSubstring("PackageName: lodash"))
}

// `imageguard scan --vex` removes the findings an OpenVEX statement says do not affect the image,
// lists them as suppressed, and counts only what still applies; a document that is no VEX fails.
func TestScanCommandAppliesVEX(t *testing.T) {
	g := NewWithT(t)
	reg := testutil.NewRegistry(t)
	img, err := testutil.DebianImage("12.11", appPackages)
	g.Expect(err).NotTo(HaveOccurred())
	ref, digest := reg.Push(t, "team/app", "1.0", img)
	dbPath := buildTestDB(t, scanAdvisories)
	doc := filepath.Join(t.TempDir(), "app.openvex.json")
	g.Expect(os.WriteFile(doc, []byte(`{"@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://example.com/vex/1",
  "author": "team", "timestamp": "2026-11-01T00:00:00Z", "version": 1,
  "statements": [{"vulnerability": {"name": "CVE-2026-2001"}, "products": [{"@id": "pkg:oci/app@`+digest.String()+`"}],
    "status": "not_affected", "justification": "vulnerable_code_not_in_execute_path"}]}`), 0o600)).To(Succeed())
	args := []string{"scan", ref, "--db-path", dbPath, "--insecure-registries", reg.Host(), "--cache-dir", t.TempDir(), "--vex", doc}

	var stdout, stderr bytes.Buffer
	g.Expect(run(append(args, "-o", "json"), &stdout, &stderr)).To(Equal(0), stderr.String())
	var printed scanReport
	g.Expect(json.Unmarshal(stdout.Bytes(), &printed)).To(Succeed())
	g.Expect(printed.Summary).To(Equal(map[string]int{"low": 1}))
	g.Expect(printed.Vulnerabilities).To(ConsistOf(HaveField("ID", "CVE-2026-2002")))
	g.Expect(printed.Suppressed).To(ConsistOf(scanner.Suppressed{ID: "CVE-2026-2001", Package: "libssl3",
		InstalledVersion: "3.0.15-1~deb12u1", Severity: "HIGH", Target: printed.Vulnerabilities[0].Target,
		Status: "not_affected", Justification: "vulnerable_code_not_in_execute_path", Source: doc}))

	stdout.Reset()
	g.Expect(run(args, &stdout, &stderr)).To(Equal(0), stderr.String())
	g.Expect(stdout.String()).To(ContainSubstring("Total: 1 (CRITICAL: 0, HIGH: 0, MEDIUM: 0, LOW: 1, UNKNOWN: 0)"))
	g.Expect(stdout.String()).To(MatchRegexp(`Suppressed by VEX: 1\n\nID\s+PACKAGE.*\nCVE-2026-2001\s+libssl3\s+3.0.15-1~deb12u1\s+not_affected\s+vulnerable_code_not_in_execute_path`))

	g.Expect(os.WriteFile(doc, []byte(`{"not": "vex"}`), 0o600)).To(Succeed())
	stderr.Reset()
	g.Expect(run(args, &stdout, &stderr)).To(Equal(1))
	g.Expect(stderr.String()).To(ContainSubstring("applying VEX"))
}

func TestScanCommandErrors(t *testing.T) {
	tests := map[string]struct {
		args     []string
		wantCode int
		wantErr  string
	}{
		"no image":          {args: []string{"scan"}, wantCode: 2, wantErr: "exactly one image"},
		"a bad format":      {args: []string{"scan", "x", "-o", "xml"}, wantCode: 2, wantErr: `unknown output format "xml"`},
		"a malformed image": {args: []string{"scan", "UPPER/Case::", "--db-path", "/nonexistent"}, wantCode: 1, wantErr: "malformed image reference"},
		"sbom, no image":    {args: []string{"sbom"}, wantCode: 2, wantErr: "sbom takes exactly one image"},
		"sbom, a bad format": {args: []string{"sbom", "x", "-o", "json"}, wantCode: 2,
			wantErr: `unknown SBOM format "json": use cyclonedx, spdx-json, spdx`},
		"sbom, a malformed image": {args: []string{"sbom", "UPPER/Case::"}, wantCode: 1, wantErr: "malformed image reference"},
		"scan, an absent VEX document": {args: []string{"scan", "x", "--vex", "/nonexistent/vex.json"}, wantCode: 2,
			wantErr: "--vex: VEX document: stat /nonexistent/vex.json: no such file or directory"},
		"scan, a VEX folder": {args: []string{"scan", "x", "--vex", "/"}, wantCode: 2, wantErr: "--vex: VEX document /: not a regular file"},
		"scan, VEX from OCI": {args: []string{"scan", "x", "--vex", "oci"}, wantCode: 2, wantErr: "a VEX file path is expected"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			var stdout, stderr bytes.Buffer
			g.Expect(run(tt.args, &stdout, &stderr)).To(Equal(tt.wantCode))
			g.Expect(stderr.String()).To(ContainSubstring(tt.wantErr))
		})
	}
}
