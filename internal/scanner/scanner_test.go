package scanner_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	. "github.com/onsi/gomega"
	. "github.com/onsi/gomega/gstruct"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
)

// finding matches a scanner.Finding on the fields parity with the trivy CLI is judged by.
func finding(id, pkg, installed, fixed, severity, pkgType string) OmegaMatcher {
	return MatchFields(IgnoreExtras, Fields{
		"ID": Equal(id), "Package": Equal(pkg), "InstalledVersion": Equal(installed),
		"FixedVersion": Equal(fixed), "Severity": Equal(severity), "PackageType": Equal(pkgType),
	})
}

func TestFixtureImagesYieldTheirFindings(t *testing.T) {
	f := newFixture(t)
	tests := map[string]struct {
		repo   string
		image  func(testing.TB) v1.Image
		os     scanner.OS
		wanted []OmegaMatcher
	}{
		"alpine": {
			repo:  "fixtures/alpine",
			image: alpineImage,
			os:    scanner.OS{Family: "alpine", Name: "3.22.1"},
			wanted: []OmegaMatcher{
				finding("CVE-2026-1001", "libcrypto3", "3.5.1-r0", "3.5.2-r0", "CRITICAL", "alpine"),
			},
		},
		"debian, advisories keyed by source package": {
			repo:  "fixtures/debian",
			image: debianImage,
			os:    scanner.OS{Family: "debian", Name: "12.11"},
			wanted: []OmegaMatcher{
				finding("CVE-2026-2001", "libssl3", "3.0.15-1~deb12u1", "3.0.17-1~deb12u1", "HIGH", "debian"),
				finding("CVE-2026-2001", "openssl", "3.0.15-1~deb12u1", "3.0.17-1~deb12u1", "HIGH", "debian"),
				finding("CVE-2026-2002", "zlib1g", "1:1.2.13.dfsg-1", "", "MEDIUM", "debian"),
			},
		},
		"npm": {
			repo:  "fixtures/npm",
			image: npmImage,
			wanted: []OmegaMatcher{
				finding("GHSA-35jh-r3h4-6jhm", "lodash", "4.17.20", "4.17.21", "HIGH", "node-pkg"),
			},
		},
		"go binary": {
			repo:  "fixtures/go",
			image: func(t testing.TB) v1.Image { return testutil.GoBinaryImage(t, testutil.DefaultGoModules) },
			wanted: []OmegaMatcher{
				finding("CVE-2022-32149", "golang.org/x/text", "v0.3.7", "0.3.8", "HIGH", "gobinary"),
			},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			ref := f.push(t, tt.repo, tt.image(t))
			_, res, err := f.scanner.Scan(testContext(t), ref)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(res.Findings).To(ConsistOf(tt.wanted))
			if tt.os.Family != "" {
				g.Expect(res.OS).To(Equal(tt.os))
			}
			g.Expect(res.DB.Digest).To(HavePrefix("sha256:"))
			g.Expect(res.DB.UpdatedAt).To(Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)))
		})
	}
}

func TestFindingsAreSortedBySeverityThenID(t *testing.T) {
	g := NewWithT(t)
	findings := []scanner.Finding{
		{ID: "B", Severity: "LOW"}, {ID: "Z", Severity: "CRITICAL"}, {ID: "A", Severity: "LOW"},
		{ID: "M", Severity: "UNKNOWN"}, {ID: "C", Severity: "HIGH"},
	}
	scanner.SortFindings(findings)
	var ids []string
	for _, f := range findings {
		ids = append(ids, f.ID)
	}
	g.Expect(ids).To(Equal([]string{"Z", "C", "A", "B", "M"}))
}

func TestKeptInventoryIsNotPulledAgain(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	ref := f.push(t, "kept/alpine", alpineImage(t))
	ctx := testContext(t)

	_, first, err := f.scanner.Scan(ctx, ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(f.reg.Counts().BlobGETs).To(BeNumerically(">", 0))
	g.Expect(f.scanner.Analyses()).To(BeEquivalentTo(1))

	// The same scanner, then a new one on the same cache folder (a restart): no registry request.
	f.reg.ResetCounts()
	_, again, err := f.scanner.Scan(ctx, ref)
	g.Expect(err).NotTo(HaveOccurred())
	restarted := f.newScanner(t, scanner.Options{})
	_, afterRestart, err := restarted.Scan(ctx, ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(f.reg.Counts().BlobGETs).To(BeZero())
	g.Expect(f.reg.Counts().Requests).To(BeZero())
	g.Expect(restarted.Analyses()).To(BeZero())
	g.Expect(again.Findings).To(Equal(first.Findings))
	g.Expect(afterRestart.Findings).To(Equal(first.Findings))
}

func TestConcurrentRequestsShareOneAnalysis(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	ref := f.push(t, "shared/debian", debianImage(t))
	f.reg.ResetCounts()

	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = f.scanner.Inventory(testContext(t), ref)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(f.scanner.Analyses()).To(BeEquivalentTo(1))
	// One image config and one layer, each read once.
	g.Expect(f.reg.Counts().BlobGETs).To(Equal(2))
}

// One image asked for under two flights at once (its own digest and an index's, or for nodes of
// two platforms) is analysed once: the layer GETs are held until every request has resolved its
// manifest, so the analyses certainly overlap.
func TestOneImageUnderTwoNamesIsAnalysedOnce(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	amd := debianImage(t)
	arm := must(testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: "arm64"},
		must(testutil.LayerFromFiles(map[string][]byte{"etc/debian_version": []byte("12.11\n")}))))
	_, index := f.reg.PushIndex(t, "overlap/app", "1.0", must(testutil.IndexFromImages(amd, arm)))
	image := f.push(t, "overlap/app", amd)
	refs := []scanner.ImageRef{
		{Repository: image.Repository, Digest: index.String()},                        // the index, for amd64
		{Repository: image.Repository, Digest: image.Digest, Platform: "linux/amd64"}, // the image itself
		{Repository: image.Repository, Digest: image.Digest, Platform: "linux/arm64"}, // the same, on an arm64 node
	}
	release := make(chan struct{})
	f.reg.SetFault(func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/") {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		return false
	})
	f.reg.ResetCounts()

	var wg sync.WaitGroup
	invs := make([]*scanner.Inventory, len(refs))
	errs := make([]error, len(refs))
	for i, ref := range refs {
		wg.Go(func() { invs[i], _, errs[i] = f.scanner.Inventory(testContext(t), ref) })
	}
	// Each flight resolves its manifest (the index's, then its child's; the image's twice), then
	// would GET blobs; it is given time to reach them before they are let through.
	g.Eventually(func() int { return f.reg.Counts().ManifestGETs }, time.Minute, 10*time.Millisecond).Should(BeNumerically(">=", 4))
	time.Sleep(300 * time.Millisecond)
	close(release)
	wg.Wait()
	for i := range refs {
		g.Expect(errs[i]).NotTo(HaveOccurred())
		g.Expect(invs[i].Digest).To(Equal(image.Digest))
	}
	g.Expect(f.scanner.Analyses()).To(BeEquivalentTo(1))
	g.Expect(f.reg.Counts().BlobGETs).To(Equal(2), "one config and one layer")
}

// The same digest from another registry is another analysis: a registry that fails (or stalls)
// on purpose does not fail an analysis of the same image from another one that runs at once;
// and a re-analysis asked for is not served a flight's kept inventory.
func TestAnotherRegistrysFailureIsNotShared(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	hostile := testutil.NewRegistry(t)
	img := debianImage(t)
	victim := f.push(t, "shared/app", img)
	_, digest := hostile.Push(t, "copy/app", "1.0", img)
	g.Expect(digest.String()).To(Equal(victim.Digest))
	attacker := scanner.ImageRef{Repository: hostile.Host() + "/copy/app", Digest: victim.Digest}
	client := registry.NewClient(registry.Options{InsecureHosts: []string{f.reg.Host(), hostile.Host()}})
	s := must(scanner.New(scanner.Options{CacheDir: t.TempDir()}, client, f.db))

	release := make(chan struct{})
	hostile.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return testutil.StatusFault(http.StatusInternalServerError)(w, r)
	})
	errs := make(chan error, 1)
	go func() { _, _, err := s.Inventory(testContext(t), attacker); errs <- err }()
	g.Eventually(func() int { return hostile.Counts().BlobGETs }, time.Minute, 10*time.Millisecond).Should(BeNumerically(">", 0))
	victimDone := make(chan error, 1)
	go func() { _, _, err := s.Inventory(testContext(t), victim); victimDone <- err }()
	g.Eventually(func() int { return f.reg.Counts().ManifestGETs }, time.Minute, 10*time.Millisecond).Should(BeNumerically(">", 0))
	time.Sleep(300 * time.Millisecond)
	close(release)
	g.Expect(<-errs).To(HaveOccurred())
	g.Expect(<-victimDone).NotTo(HaveOccurred(), "the victim's own analysis, from its own registry")

	// A re-analysis (fresher than what is kept) is not a kept inventory served.
	kept, _, err := s.Inventory(testContext(t), victim)
	g.Expect(err).NotTo(HaveOccurred())
	fresher := victim
	fresher.AnalyzedAfter = kept.AnalyzedAt.Add(time.Second)
	before := s.Analyses()
	_, analysed, err := s.Inventory(testContext(t), fresher)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(analysed).To(BeTrue())
	g.Expect(s.Analyses() - before).To(BeEquivalentTo(1))
}

func TestMultiArchIndexPicksThePlatform(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	amd := alpineImage(t)
	armLayer := must(testutil.LayerFromFiles(map[string][]byte{
		"etc/alpine-release":   []byte("3.22.1\n"),
		"lib/apk/db/installed": []byte("P:busybox\nV:1.36.0-r0\nA:aarch64\no:busybox\n\n"),
	}))
	arm := must(testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: "arm64"}, armLayer))
	idx := must(testutil.IndexFromImages(amd, arm))
	_, digest := f.reg.PushIndex(t, "multi/app", "1.0", idx)
	ref := scanner.ImageRef{Repository: f.reg.Host() + "/multi/app", Digest: digest.String()}

	// One scanner, one index digest, two platforms: each gets its own image's findings.
	armRef := ref
	armRef.Platform = "linux/arm64"
	inv, res, err := f.scanner.Scan(testContext(t), armRef)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Findings).To(ConsistOf(finding("CVE-2026-1002", "busybox", "1.36.0-r0", "1.37.0-r10", "HIGH", "alpine")))
	g.Expect(res.Platform).To(Equal("linux/arm64"))
	armDigest := must(arm.Digest())
	g.Expect(inv.Digest).To(Equal(armDigest.String()), "kept under the arm64 image's own digest")

	_, res, err = f.scanner.Scan(testContext(t), ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Findings).To(ConsistOf(finding("CVE-2026-1001", "libcrypto3", "3.5.1-r0", "3.5.2-r0", "CRITICAL", "alpine")))
	g.Expect(res.Platform).To(Equal("linux/amd64"))
	g.Expect(f.scanner.Analyses()).To(BeEquivalentTo(2))

	// Matched again, on either platform, from what is kept: no registry request.
	before := f.reg.Counts().Requests
	for _, r := range []scanner.ImageRef{ref, armRef} {
		g.Expect(f.scanner.Analysed(r.Digest, r.Platform)).To(BeTrue())
		_, _, err = f.scanner.Scan(testContext(t), r)
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(f.reg.Counts().Requests).To(Equal(before))
	g.Expect(f.scanner.Analyses()).To(BeEquivalentTo(2))

	// The arm64 image's own digest is the same image: no new analysis, whatever platform asks.
	_, res, err = f.scanner.Scan(testContext(t), scanner.ImageRef{Repository: ref.Repository, Digest: armDigest.String()})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Platform).To(Equal("linux/arm64"))
	g.Expect(f.scanner.Analyses()).To(BeEquivalentTo(2))

	// The index's platforms were kept with its aliases; an image manifest has none.
	before = f.reg.Counts().Requests
	g.Expect(f.scanner.IndexPlatforms(testContext(t), ref)).To(Equal([]string{"linux/amd64", "linux/arm64"}))
	g.Expect(f.scanner.IndexPlatforms(testContext(t), scanner.ImageRef{Repository: ref.Repository, Digest: armDigest.String()})).To(BeNil())
	g.Expect(f.reg.Counts().Requests).To(Equal(before))
	// A cache that lacks them (an index analysed before they were kept) reads them once.
	fresh := must(scanner.New(scanner.Options{CacheDir: t.TempDir()}, f.client, f.db))
	gets := f.reg.Counts().ManifestGETs
	g.Expect(fresh.IndexPlatforms(testContext(t), ref)).To(Equal([]string{"linux/amd64", "linux/arm64"}))
	g.Expect(f.reg.Counts().ManifestGETs).To(Equal(gets + 1))
	before = f.reg.Counts().Requests
	g.Expect(fresh.IndexPlatforms(testContext(t), ref)).To(Equal([]string{"linux/amd64", "linux/arm64"}))
	g.Expect(f.reg.Counts().Requests).To(Equal(before))

	// A platform the index lacks is a clear, terminal error; a malformed one too.
	s390 := ref
	s390.Platform = "linux/s390x"
	_, _, err = f.scanner.Scan(testContext(t), s390)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "got %v", err)
	g.Expect(err.Error()).To(ContainSubstring("has no image for linux/s390x"))
	bad := ref
	bad.Platform = "linux"
	_, _, err = f.scanner.Scan(testContext(t), bad)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "got %v", err)
}

// The image of an index scanned for a node's platform is the one containerd runs there: an
// arm64 node runs an arm/v7 image when there is no arm64 one, an amd64 node a plain amd64 image
// before an amd64/v3 one listed first, and a 386 one when there is no amd64 image.
func TestTheImageANodeRunsIsTheOneScanned(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	image := func(arch, variant, busybox string) v1.Image {
		layer := must(testutil.LayerFromFiles(map[string][]byte{
			"etc/alpine-release":   []byte("3.22.1\n"),
			"lib/apk/db/installed": []byte("P:busybox\nV:" + busybox + "\nA:x\no:busybox\n\n"),
		}))
		return must(testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: arch, Variant: variant}, layer))
	}
	vulnerable, fixed := "1.36.0-r0", "1.37.0-r18"
	scan := func(repo, platform string, imgs ...v1.Image) ([]scanner.Finding, []string) {
		_, digest := f.reg.PushIndex(t, repo, "1.0", must(testutil.IndexFromImages(imgs...)))
		ref := scanner.ImageRef{Repository: f.reg.Host() + "/" + repo, Digest: digest.String(), Platform: platform}
		_, res, err := f.scanner.Scan(testContext(t), ref)
		g.Expect(err).NotTo(HaveOccurred())
		platforms, err := f.scanner.IndexPlatforms(testContext(t), ref)
		g.Expect(err).NotTo(HaveOccurred())
		return res.Findings, platforms
	}
	found, platforms := scan("choice/arm", "linux/arm64", image("amd64", "", fixed), image("arm", "v7", vulnerable))
	g.Expect(found).To(HaveLen(1), "the arm/v7 image, which the arm64 node runs")
	g.Expect(platforms).To(Equal([]string{"linux/amd64", "linux/arm/v7"}))
	found, _ = scan("choice/v3", "", image("amd64", "v3", vulnerable), image("amd64", "", fixed))
	g.Expect(found).To(BeEmpty(), "the plain amd64 image, not the amd64/v3 one listed first")
	found, platforms = scan("choice/386", "", image("386", "", vulnerable), image("arm64", "", fixed))
	g.Expect(found).To(HaveLen(1), "the 386 image, which an amd64 node runs")
	g.Expect(platforms).To(Equal([]string{"linux/386", "linux/arm64"}))

	// containerd follows one descriptor per level: images that name no platform after those that
	// do, in the index's order (the first, if its config matches); a nested index by its own
	// descriptor's platform; a child with os.features not on a node that has none.
	index := func(adds ...mutate.IndexAddendum) v1.ImageIndex {
		return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	}
	bare := func(img v1.Image) mutate.IndexAddendum { return mutate.IndexAddendum{Add: img} }
	on := func(add v1.ImageIndex, p v1.Platform) mutate.IndexAddendum {
		return mutate.IndexAddendum{Add: add, Descriptor: v1.Descriptor{Platform: &p}}
	}
	scanIndex := func(repo string, idx v1.ImageIndex) []scanner.Finding {
		_, digest := f.reg.PushIndex(t, repo, "1.0", idx)
		_, res, err := f.scanner.Scan(testContext(t), scanner.ImageRef{Repository: f.reg.Host() + "/" + repo, Digest: digest.String()})
		g.Expect(err).NotTo(HaveOccurred())
		return res.Findings
	}
	g.Expect(scanIndex("choice/unplatformed", index(bare(image("386", "", vulnerable)), bare(image("amd64", "", fixed))))).
		To(HaveLen(1), "the first image naming no platform whose config matches: the 386 one")
	nestedArm := must(testutil.IndexFromImages(image("amd64", "", vulnerable)))
	g.Expect(scanIndex("choice/nested", index(on(nestedArm, v1.Platform{OS: "linux", Architecture: "arm64"}),
		mutate.IndexAddendum{Add: image("amd64", "", fixed), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}}))).
		To(BeEmpty(), "a nested index labelled arm64 is not followed on amd64")
	featured := v1.Platform{OS: "linux", Architecture: "amd64", OSFeatures: []string{"x"}}
	g.Expect(scanIndex("choice/features", index(
		mutate.IndexAddendum{Add: image("amd64", "", vulnerable), Descriptor: v1.Descriptor{Platform: &featured}},
		mutate.IndexAddendum{Add: image("amd64", "", fixed), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}}))).
		To(BeEmpty(), "a child with os.features is not a featureless node's")
}

// Trivy finds nothing in a Windows image: it is UnsupportedImage, not a clean report.
func TestAWindowsImageIsUnsupported(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	layer := must(testutil.LayerFromFiles(map[string][]byte{"Files/app.exe": []byte("MZ")}))
	win := must(testutil.ImageFromLayers(v1.Platform{OS: "windows", Architecture: "amd64"}, layer))
	_, _, err := f.scanner.Scan(testContext(t), f.push(t, "windows/app", win))
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "got %v", err)
	g.Expect(err.Error()).To(ContainSubstring("only Linux images are analysed"))
}

func TestPrivateRegistryNeedsThePullSecret(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t, testutil.WithBasicAuth("puller", "s3cret"))
	ref := f.push(t, "private/app", alpineImage(t))
	ctx := testContext(t)

	_, _, err := f.scanner.Scan(ctx, ref)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnauthorized), "got %v", err)
	g.Expect(err.Error()).NotTo(ContainSubstring("s3cret"))

	secret := corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: "team"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(
			`{"auths":{"` + f.reg.Host() + `":{"username":"puller","password":"s3cret"}}}`)},
	}
	keychain, err := registry.KeychainFromSecrets(ctx, []corev1.Secret{secret})
	g.Expect(err).NotTo(HaveOccurred())
	ref.Keychain = keychain
	_, res, err := f.scanner.Scan(ctx, ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Findings).To(HaveLen(1))

	// A secret for another registry does not help.
	other, err := registry.KeychainFromSecrets(ctx, []corev1.Secret{{
		Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"registry.example.com":{"username":"puller","password":"s3cret"}}}`)},
	}})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = f.client.ResolveDigest(ctx, ref.Repository+":1.0", other)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnauthorized))
	_, err = f.client.ResolveDigest(ctx, ref.Repository+":1.0", authn.NewMultiKeychain(keychain))
	g.Expect(err).NotTo(HaveOccurred())
}

func TestHostileImagesEndWithTypedErrors(t *testing.T) {
	f := newFixture(t)
	base := must(testutil.LayerFromFiles(map[string][]byte{"etc/alpine-release": []byte("3.22.1\n")}))
	image := func(layers ...v1.Layer) v1.Image {
		return must(testutil.ImageFromLayers(testutil.LinuxAMD64, append([]v1.Layer{base}, layers...)...))
	}
	limits := scanner.Limits{MaxCompressedBytes: 8 << 20, MaxUncompressedBytes: 64 << 20, MaxLayers: 8, MaxFiles: 1000}
	tests := map[string]struct {
		image    v1.Image
		wantKind registry.Kind
		wantMsg  string
	}{
		"a decompression bomb": {
			image: image(testutil.DecompressionBombLayer(1 << 30)), wantKind: registry.KindUnsupported, wantMsg: "expands to more than",
		},
		"paths that leave the root": {
			image: image(testutil.PathTraversalLayer()), wantKind: registry.KindUnsupported, wantMsg: "leaves the image root",
		},
		"an image over the size limit": {
			image: image(testutil.PaddingLayer(9<<20, 1)), wantKind: registry.KindUnsupported, wantMsg: "more than the limit",
		},
		"too many layers": {
			image: image(base, base, base, base, base, base, base, base), wantKind: registry.KindUnsupported, wantMsg: "layers, more than",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			s := f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), Limits: limits, Timeout: time.Minute})
			ref := f.push(t, "hostile/app", tt.image)
			_, _, err := s.Scan(testContext(t), ref)
			g.Expect(registry.KindOf(err)).To(Equal(tt.wantKind), "got %v", err)
			g.Expect(err.Error()).To(ContainSubstring(tt.wantMsg))
		})
	}
}

func TestHangingRegistryEndsWithTimeout(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	ref := f.push(t, "slow/app", alpineImage(t))
	f.reg.SetFault(f.reg.HangFault())
	s := f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), Timeout: 2 * time.Second})

	_, _, err := s.Scan(context.Background(), ref)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindTimeout), "got %v", err)
}
