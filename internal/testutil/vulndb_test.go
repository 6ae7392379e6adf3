package testutil

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aquasecurity/trivy-db/pkg/db"
	"github.com/aquasecurity/trivy-db/pkg/metadata"
	dbtypes "github.com/aquasecurity/trivy-db/pkg/types"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	. "github.com/onsi/gomega"
	bolt "go.etcd.io/bbolt"
)

const fixtureAdvisories = `
updatedAt: 2026-11-01T00:00:00Z
advisories:
- id: CVE-2026-0001
  ecosystem: alpine 3.22
  package: openssl
  fixedVersion: 3.5.2-r0
  severity: CRITICAL
  title: openssl overflow
  description: A buffer overflow.
  references: [https://example.invalid/CVE-2026-0001]
- id: CVE-2026-0001
  ecosystem: debian 12
  package: openssl
  severity: HIGH
- id: CVE-2026-0002
  ecosystem: debian 12
  package: glibc
  fixedVersion: 2.36-9+deb12u9
  severity: MEDIUM
  title: glibc bug
- id: CVE-2026-0003
  ecosystem: debian 12
  package: zlib
  status: will_not_fix
  severity: LOW
- id: GHSA-aaaa-bbbb-cccc
  ecosystem: npm::GitHub Security Advisory npm
  package: lodash
  vulnerableVersions: ["<4.17.21"]
  patchedVersions: [">=4.17.21"]
  severity: HIGH
  title: Prototype pollution in lodash
- id: CVE-2022-32149
  ecosystem: go::GitHub Security Advisory Go
  package: golang.org/x/text
  vulnerableVersions: ["<0.3.8"]
  patchedVersions: ["0.3.8"]
  severity: HIGH
`

// TestBuildDBReadByTrivyDB proves the directly written bbolt file is what trivy-db's own reader
// expects. This test process never opens a scanner, so using trivy-db's global handle is safe.
func TestBuildDBReadByTrivyDB(t *testing.T) {
	g := NewWithT(t)
	spec, err := ParseAdvisories([]byte(fixtureAdvisories))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(spec.UpdatedAt).To(Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)))

	dir := t.TempDir()
	g.Expect(BuildDB(dir, spec)).To(Succeed())

	meta, err := metadata.NewClient(filepath.Join(dir, "db")).Get()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(meta.Version).To(Equal(db.SchemaVersion))
	g.Expect(meta.UpdatedAt).To(Equal(spec.UpdatedAt))
	g.Expect(meta.NextUpdate).To(Equal(spec.UpdatedAt.Add(24 * time.Hour)))
	raw, err := os.ReadFile(filepath.Join(dir, "db", "metadata.json"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(raw)).To(ContainSubstring(`"Version":2`))

	// Read-only, as Trivy's pkg/db opens it.
	g.Expect(db.Init(filepath.Join(dir, "db"), db.WithBoltOptions(&bolt.Options{ReadOnly: true}))).To(Succeed())
	t.Cleanup(func() { _ = db.Close() })
	dbc := db.Config{}

	alpine, err := dbc.GetAdvisories(BucketAlpine("3.22.1"), "openssl")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(alpine).To(HaveLen(1))
	g.Expect(alpine[0].VulnerabilityID).To(Equal("CVE-2026-0001"))
	g.Expect(alpine[0].FixedVersion).To(Equal("3.5.2-r0"))
	g.Expect(alpine[0].Status).To(Equal(dbtypes.StatusUnknown), "fixed advisories carry no status")
	g.Expect(alpine[0].DataSource).To(Equal(&dbtypes.DataSource{ID: "alpine", Name: "Alpine Secdb", URL: "https://secdb.alpinelinux.org/"}))

	// Debian is keyed by the source package.
	deb, err := dbc.GetAdvisories(BucketDebian("12.7"), "openssl")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(deb).To(HaveLen(1))
	g.Expect(deb[0].FixedVersion).To(BeEmpty())
	g.Expect(deb[0].Status).To(Equal(dbtypes.StatusAffected))
	g.Expect(deb[0].DataSource.ID).To(Equal(dbtypes.SourceID("debian")))
	zlib, err := dbc.GetAdvisories("debian 12", "zlib")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(zlib).To(HaveLen(1))
	g.Expect(zlib[0].Status).To(Equal(dbtypes.StatusWillNotFix))
	glibc, err := dbc.GetAdvisories("debian 12", "glibc")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(glibc).To(HaveLen(1))
	g.Expect(glibc[0].FixedVersion).To(Equal("2.36-9+deb12u9"))
	none, err := dbc.GetAdvisories("debian 12", "libssl3")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(none).To(BeEmpty(), "binary package names are not keys")

	// Language lookups go by ecosystem prefix across buckets, as Trivy's library detector does.
	npm, err := dbc.GetAdvisories("npm::", "lodash")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(npm).To(HaveLen(1))
	g.Expect(npm[0].VulnerabilityID).To(Equal("GHSA-aaaa-bbbb-cccc"))
	g.Expect(npm[0].VulnerableVersions).To(Equal([]string{"<4.17.21"}))
	g.Expect(npm[0].PatchedVersions).To(Equal([]string{">=4.17.21"}))
	g.Expect(npm[0].DataSource.ID).To(Equal(dbtypes.SourceID("ghsa")))
	g.Expect(npm[0].DataSource.Name).To(Equal("GitHub Security Advisory npm"))
	goAdv, err := dbc.GetAdvisories("go::", "golang.org/x/text")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(goAdv).To(HaveLen(1))
	g.Expect(goAdv[0].PatchedVersions).To(Equal([]string{"0.3.8"}))
	g.Expect(goAdv[0].DataSource.Name).To(Equal("GitHub Security Advisory Go"))

	vuln, err := dbc.GetVulnerability("CVE-2026-0001")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(vuln.Title).To(Equal("openssl overflow"))
	g.Expect(vuln.Description).To(Equal("A buffer overflow."))
	g.Expect(vuln.Severity).To(Equal("CRITICAL")) //nolint:staticcheck // SA1019: the field the fixture fills
	g.Expect(vuln.References).To(Equal([]string{"https://example.invalid/CVE-2026-0001"}))
	g.Expect(vuln.VendorSeverity).To(Equal(dbtypes.VendorSeverity{
		"alpine": dbtypes.SeverityCritical,
		"debian": dbtypes.SeverityHigh,
	}))
	ghsa, err := dbc.GetVulnerability("GHSA-aaaa-bbbb-cccc")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ghsa.VendorSeverity).To(HaveKeyWithValue(dbtypes.SourceID("ghsa"), dbtypes.SeverityHigh))
}

func TestBuildDBEmptyHasVulnerabilityBucket(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	g.Expect(BuildDB(dir, &DBSpec{})).To(Succeed())
	bdb, err := bolt.Open(filepath.Join(dir, "db", "trivy.db"), 0o644, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	g.Expect(err).NotTo(HaveOccurred())
	defer bdb.Close()
	g.Expect(bdb.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("vulnerability")) == nil {
			return errors.New("no vulnerability bucket")
		}
		return nil
	})).To(Succeed())
}

func TestParseAdvisoriesRejects(t *testing.T) {
	for name, y := range map[string]string{
		"unknown field":      "advisories:\n- id: X\n  ecosystem: alpine 3.22\n  package: p\n  fixed: 1\n",
		"missing package":    "advisories:\n- id: X\n  ecosystem: alpine 3.22\n",
		"bad severity":       "advisories:\n- id: X\n  ecosystem: alpine 3.22\n  package: p\n  severity: SEVERE\n",
		"unknown bucket":     "advisories:\n- id: X\n  ecosystem: ubuntu 24.04\n  package: p\n",
		"lang without range": "advisories:\n- id: X\n  ecosystem: npm::GitHub Security Advisory npm\n  package: p\n",
		"os with range":      "advisories:\n- id: X\n  ecosystem: debian 12\n  package: p\n  patchedVersions: ['1']\n",
		"duplicate": "advisories:\n- {id: X, ecosystem: debian 12, package: p}\n" +
			"- {id: X, ecosystem: debian 12, package: p}\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseAdvisories([]byte(y))
			NewWithT(t).Expect(err).To(HaveOccurred())
		})
	}

	g := NewWithT(t)
	spec, err := ParseAdvisories([]byte("dataSources:\n  ubuntu 24.04: {id: ubuntu, name: Ubuntu CVE Tracker}\n" +
		"advisories:\n- {id: X, ecosystem: ubuntu 24.04, package: p}\n"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(spec.Advisories).To(HaveLen(1))
}

func TestDBArtifact(t *testing.T) {
	g := NewWithT(t)
	spec, err := ParseAdvisories([]byte(fixtureAdvisories))
	g.Expect(err).NotTo(HaveOccurred())
	reg := NewRegistry(t)
	digest := reg.PublishDB(t, "aquasec/trivy-db", "2", spec)

	r, err := name.ParseReference(reg.Host() + "/aquasec/trivy-db:2")
	g.Expect(err).NotTo(HaveOccurred())
	desc, err := remote.Head(r)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(desc.Digest).To(Equal(digest))
	g.Expect(reg.Counts().ManifestHEADs).To(Equal(1))

	img, err := remote.Image(r)
	g.Expect(err).NotTo(HaveOccurred())
	m, err := img.Manifest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m.MediaType).To(Equal(types.OCIManifestSchema1))
	g.Expect(m.Config.MediaType).To(Equal(DBConfigMediaType))
	g.Expect(m.Layers).To(HaveLen(1))
	g.Expect(m.Layers[0].MediaType).To(Equal(DBLayerMediaType))
	g.Expect(m.Layers[0].Annotations).To(Equal(map[string]string{"org.opencontainers.image.title": "db.tar.gz"}))
	cfg, err := img.RawConfigFile()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(cfg)).To(Equal("{}"))

	layers, err := img.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(layers).To(HaveLen(1))
	rc, err := layers[0].Compressed()
	g.Expect(err).NotTo(HaveOccurred())
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	g.Expect(err).NotTo(HaveOccurred())
	tr := tar.NewReader(zr)
	contents := map[string][]byte{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		g.Expect(err).NotTo(HaveOccurred())
		b, err := io.ReadAll(tr)
		g.Expect(err).NotTo(HaveOccurred())
		contents[hdr.Name] = b
	}
	g.Expect(contents).To(HaveKey("trivy.db"))
	g.Expect(contents).To(HaveKey("metadata.json"))
	g.Expect(contents).To(HaveLen(2))
	var meta metadata.Metadata
	g.Expect(json.Unmarshal(contents["metadata.json"], &meta)).To(Succeed())
	g.Expect(meta.Version).To(Equal(2))
	g.Expect(len(contents["trivy.db"])).To(BeNumerically(">", 4096), "a bbolt file")
}
