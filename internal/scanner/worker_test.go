package scanner_test

import (
	"archive/zip"
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/authn"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
	"github.com/imageguard/imageguard/internal/vulndb"
)

// TestMain makes this test binary an analysis worker when it is started as one.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "analyze-worker" {
		os.Exit(scanner.RunWorker(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

func workerOptions(memory int64) *scanner.WorkerOptions {
	return &scanner.WorkerOptions{Command: []string{os.Args[0], "analyze-worker"}, MemoryBytes: memory}
}

type basicKeychain struct{ user, password string }

func (k basicKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.password}, nil
}

// TestAWorkerFindsWhatTheControllerFinds analyses the same image, behind basic auth, in a worker
// process and in process: the inventories are the same.
func TestAWorkerFindsWhatTheControllerFinds(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t, testutil.WithBasicAuth("puller", "s3cret"))
	ref := f.push(t, "worker/alpine", alpineImage(t))
	ref.Keychain = basicKeychain{"puller", "s3cret"}
	inProcess, _, err := f.newScanner(t, scanner.Options{CacheDir: t.TempDir()}).Inventory(context.Background(), ref)
	g.Expect(err).NotTo(HaveOccurred())
	s := f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), Worker: workerOptions(512 << 20)})
	inWorker, analysed, err := s.Inventory(context.Background(), ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(analysed).To(BeTrue())
	g.Expect(inWorker.Packages).To(Equal(inProcess.Packages))
	g.Expect(inWorker.OS).To(Equal(inProcess.OS))
	g.Expect(inWorker.PackageCount()).To(BeNumerically(">", 0))

	// Without the credentials, the worker's error keeps its kind.
	ref.Keychain = nil
	ref.Digest = strings.Replace(ref.Digest, ref.Digest[len(ref.Digest)-4:], "0000", 1)
	_, _, err = s.Inventory(context.Background(), ref)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnauthorized), "%v", err)
}

// TestAWorkerPastItsMemoryIsStopped gives a worker a 48 MiB Cargo.lock of 786,432 packages (2 GiB
// of heap in Trivy's parser) with the package estimate turned off: the worker is stopped at its
// 256 MiB bound and the analysis ends as UnsupportedImage naming the flag, while this process's
// heap stays small.
func TestAWorkerPastItsMemoryIsStopped(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	base := alpineImage(t)
	entry := "[[package]]\nname = \"a\"\nversion = \"1.0.0\"\n"
	entry += strings.Repeat("#", 63-len(entry)) + "\n"
	ref := f.push(t, "worker/cargo", must(testutil.ImageFromLayers(testutil.LinuxAMD64,
		append(must(base.Layers()), testutil.CompressibleFileLayer("app/Cargo.lock", 48<<20, []byte(entry)))...)))
	s := f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), Limits: scanner.Limits{MaxPackages: -1}, Worker: workerOptions(256 << 20)})
	held := settleHeap(t) // what earlier tests left is not this one's
	stop := peakHeap()
	_, _, err := s.Inventory(context.Background(), ref)
	peak := stop()
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "%v", err)
	g.Expect(err).To(MatchError(ContainSubstring("more than 268435456 bytes of memory, and was stopped (--analysis-memory-bytes)")))
	t.Logf("controller's peak heap while its worker was stopped: %.1f MiB (%.1f MiB before)", float64(peak)/(1<<20), float64(held)/(1<<20))
	g.Expect(peak - min(held, peak)).To(BeNumerically("<", 64<<20))
	g.Expect(s.Analysed(ref.Digest, "")).To(BeFalse())
}

// nestedJars returns a jar of 100 KB or so that unpacks, as Trivy's jar parser unpacks a jar
// nested in a jar (each to a temporary file while its parent is open), to depth files of size
// bytes at once: each level is a stored jar holding the next, the outermost compressed.
func nestedJars(t testing.TB, depth, size int) []byte {
	t.Helper()
	write := func(method uint16, files map[string][]byte) []byte {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		for _, name := range slices.Sorted(maps.Keys(files)) {
			w := must(zw.CreateHeader(&zip.FileHeader{Name: name, Method: method}))
			must(w.Write(files[name]))
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	jar := write(zip.Store, map[string][]byte{
		"META-INF/maven/com.example/leaf/pom.properties": []byte("groupId=com.example\nartifactId=leaf\nversion=1.0.0\n"),
		"padding.bin": make([]byte, size),
	})
	for i := 1; i < depth; i++ {
		jar = write(zip.Store, map[string][]byte{fmt.Sprintf("lib/level-%d.jar", i): jar})
	}
	return write(zip.Deflate, map[string][]byte{"lib/nested.jar": jar})
}

// A chain of nested jars would write its depth times a layer's size from a small pull: the
// worker's folder is bounded as a whole (each file stays under its own bound here), the worker
// is stopped past it, and with room enough the same image is analysed.
func TestNestedJarsAreBoundedInTotal(t *testing.T) {
	g := NewWithT(t)
	f := newFixtureWithDB(t, must(testutil.ParseAdvisories([]byte(javaAdvisories))))
	bomb := nestedJars(t, 8, 24<<20)
	t.Logf("the jar: %d bytes, unpacking to 8 files of 24 MiB at once", len(bomb))
	ref := f.push(t, "worker/nested-jars", must(testutil.ImageFromLayers(testutil.LinuxAMD64,
		append(must(alpineImage(t).Layers()), must(testutil.LayerFromFiles(map[string][]byte{"app/bomb.jar": bomb})))...)))
	jdb := must(vulndb.New(vulndb.Options{Artifact: vulndb.JavaDB, LocalPath: javaDB(t), Log: logr.Discard()}))
	g.Expect(jdb.LoadLocal()).To(Succeed())

	limits := scanner.Limits{MaxCompressedBytes: 8 << 20, MaxTempBytes: 64 << 20}
	s := f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), Limits: limits, JavaDB: jdb, Worker: workerOptions(512 << 20)})
	_, _, err := s.Inventory(testContext(t), ref)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "%v", err)
	g.Expect(err).To(MatchError(ContainSubstring(fmt.Sprintf("wrote more than %d bytes to disk", 72<<20))))
	g.Expect(s.Analysed(ref.Digest, "")).To(BeFalse())

	// One nested jar larger than a file may be: stopped too, not skipped (Trivy's parser would
	// skip a copy that failed, and its packages would vanish).
	one := f.push(t, "worker/large-nested-jar", must(testutil.ImageFromLayers(testutil.LinuxAMD64,
		append(must(alpineImage(t).Layers()), must(testutil.LayerFromFiles(map[string][]byte{"app/one.jar": nestedJars(t, 1, 24<<20)})))...)))
	s = f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), Limits: scanner.Limits{MaxCompressedBytes: 8 << 20, MaxTempBytes: 16 << 20}, JavaDB: jdb, Worker: workerOptions(512 << 20)})
	_, _, err = s.Inventory(testContext(t), one)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "%v", err)
	g.Expect(err).To(MatchError(ContainSubstring(fmt.Sprintf("wrote a file of more than %d bytes", 16<<20))))

	limits.MaxTempBytes = 512 << 20
	s = f.newScanner(t, scanner.Options{CacheDir: t.TempDir(), Limits: limits, JavaDB: jdb, Worker: workerOptions(512 << 20)})
	inv, _, err := s.Inventory(testContext(t), ref)
	g.Expect(err).NotTo(HaveOccurred())
	var jars []string
	for _, app := range inv.Applications {
		for _, p := range app.Packages {
			jars = append(jars, p.Name+" "+p.Version)
		}
	}
	g.Expect(jars).To(ContainElement("com.example:leaf 1.0.0"), "the innermost jar was reached")
}
