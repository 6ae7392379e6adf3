package scanner_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/vulndb"
)

// javaAdvisories: a finding for Debian's log4j-core 2.19.0, and commons-text's Text4Shell, which
// its 1.10.0 fixes.
const javaAdvisories = `
updatedAt: 2026-11-01T00:00:00Z
advisories:
- {id: CVE-2026-2001, ecosystem: debian 12, package: openssl, fixedVersion: 3.0.17-1~deb12u1, severity: HIGH}
- {id: CVE-2026-5301, ecosystem: "maven::GitHub Security Advisory Maven", package: "org.apache.logging.log4j:log4j-core", vulnerableVersions: ["<2.20.0"], patchedVersions: ["2.20.0"], severity: CRITICAL}
- {id: CVE-2026-5302, ecosystem: "maven::GitHub Security Advisory Maven", package: "org.apache.logging.log4j:log4j-api", vulnerableVersions: ["<2.19.1"], patchedVersions: ["2.19.1"], severity: LOW}
- {id: CVE-2022-42889, ecosystem: "maven::GitHub Security Advisory Maven", package: "org.apache.commons:commons-text", vulnerableVersions: [">=1.5, <1.10.0"], patchedVersions: ["1.10.0"], severity: CRITICAL}
`

// javaImage is a Debian base with Debian's log4j2 and commons-text jars as installed.
func javaImage(t testing.TB) v1.Image {
	return onDebian(t, debianFiles(t, []string{"liblog4j2-java", "libcommons-text-java"},
		"usr/share/java/log4j-core.jar", "usr/share/java/log4j-api.jar", "usr/share/java/commons-text.jar"))
}

func javaDB(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := testutil.BuildJavaDB(dir, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestJavaArchivesNeedTheJavaDB(t *testing.T) {
	g := NewWithT(t)
	f := newFixtureWithDB(t, must(testutil.ParseAdvisories([]byte(javaAdvisories))))
	tagged, digest := f.reg.Push(t, "java/app", "1.0", javaImage(t))
	ref := scanner.ImageRef{Repository: f.reg.Host() + "/java/app", Digest: digest.String()}

	// Without a Java DB the jars are counted, not analysed.
	inv, res, err := f.scanner.Scan(testContext(t), ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(inv.JavaArchives).To(Equal(3))
	g.Expect(res.JavaArchives).To(Equal(3))
	g.Expect(res.Findings).To(HaveLen(1), "the OS finding only")

	// With one, they are analysed as Trivy analyses them, and the findings equal Trivy's.
	jdb := must(vulndb.New(vulndb.Options{Artifact: vulndb.JavaDB, LocalPath: javaDB(t), Log: logr.Discard()}))
	g.Expect(jdb.LoadLocal()).To(Succeed())
	s := f.newScanner(t, scanner.Options{JavaDB: jdb})
	settleHeap(t)
	stop, started := peakHeap(), time.Now()
	inv, res, err = s.Scan(testContext(t), ref)
	t.Logf("the Java image: analysed in %v, peak heap %.1f MiB", time.Since(started).Round(time.Millisecond), float64(stop())/(1<<20))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(inv.JavaArchives).To(BeZero())
	var got []string
	for _, finding := range res.Findings {
		got = append(got, finding.ID+" "+finding.Package+" "+finding.InstalledVersion)
	}
	g.Expect(got).To(ConsistOf("CVE-2026-2001 libssl3 3.0.15-1~deb12u1",
		"CVE-2026-5301 org.apache.logging.log4j:log4j-core 2.19.0", "CVE-2026-5302 org.apache.logging.log4j:log4j-api 2.19.0"))
	g.Expect(res.Findings).To(Equal(trivyScanTarget(testContext(t), t, f, inv)))

	// Trivy's own image scan, its jar analyzer reading the same Java DB (Trivy's process-global
	// Java DB, which the scanner pointed at it).
	g.Expect(cliFields(res.Findings)).To(ConsistOf(trivyImageScan(testContext(t), t, f, tagged)))
}

// An on-demand Java DB is downloaded when the first image with jars is analysed, never for one
// without; the image is then analysed again, with its jars.
func TestTheJavaDBIsFetchedOnTheFirstJar(t *testing.T) {
	g := NewWithT(t)
	f := newFixtureWithDB(t, must(testutil.ParseAdvisories([]byte(javaAdvisories))))
	dbDigest := f.reg.PublishJavaDB(t, "aquasecurity/trivy-java-db", "1", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), nil)
	jdb := must(vulndb.New(vulndb.Options{
		Artifact: vulndb.JavaDB, OnDemand: true, Repositories: []string{f.reg.Host() + "/aquasecurity/trivy-java-db:1"},
		CacheDir: t.TempDir(), CheckInterval: time.Hour, Registry: f.client, Log: logr.Discard(),
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- jdb.Start(ctx) }()
	defer func() { cancel(); g.Expect(<-done).To(Succeed()) }()
	s := f.newScanner(t, scanner.Options{JavaDB: jdb})

	_, _, err := s.Scan(testContext(t), f.push(t, "java/none", alpineImage(t)))
	g.Expect(err).NotTo(HaveOccurred())
	g.Consistently(jdb.Loaded).WithTimeout(300*time.Millisecond).Should(BeFalse(), "no jar, no Java DB")
	g.Expect(jdb.State().LastCheck.IsZero()).To(BeTrue(), "the Java DB's repository was never asked")

	ref := f.push(t, "java/app", javaImage(t))
	inv, _, err := s.Scan(testContext(t), ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(inv.JavaArchives).To(Equal(3))
	g.Eventually(jdb.Loaded).Should(BeTrue())
	info, _ := jdb.Info()
	g.Expect(info.Digest).To(Equal(dbDigest.String()))

	before := s.Analyses()
	inv, res, err := s.Scan(testContext(t), ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s.Analyses()-before).To(BeEquivalentTo(1), "analysed again, with the Java DB")
	g.Expect(inv.JavaArchives).To(BeZero())
	g.Expect(res.Findings).To(HaveLen(3))
	// Kept from then on: no third analysis.
	_, _, err = s.Scan(testContext(t), ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s.Analyses() - before).To(BeEquivalentTo(1))
}
