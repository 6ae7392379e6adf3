package testutil

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	. "github.com/onsi/gomega"
)

type tarFile struct {
	typeflag byte
	mode     int64
	data     []byte
}

// layerFiles reads a layer back through its compressed blob, as a registry client would.
func layerFiles(t *testing.T, l v1.Layer) (map[string]tarFile, []string) {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]tarFile{}
	var order []string
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, order
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = tarFile{typeflag: hdr.Typeflag, mode: hdr.Mode, data: data}
		order = append(order, hdr.Name)
	}
}

// imageFiles merges the files of every layer of img.
func imageFiles(t *testing.T, img v1.Image) map[string]tarFile {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]tarFile{}
	for _, l := range layers {
		files, _ := layerFiles(t, l)
		for k, v := range files {
			all[k] = v
		}
	}
	return all
}

// expectWellFormed checks what Trivy relies on: an OCI linux/amd64 image whose config diff IDs are
// the sha256 of each layer's uncompressed tar, with a history entry per layer.
func expectWellFormed(g Gomega, img v1.Image) {
	mt, err := img.MediaType()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(mt).To(Equal(types.OCIManifestSchema1))
	m, err := img.Manifest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m.Config.MediaType).To(Equal(types.OCIConfigJSON))
	cfg, err := img.ConfigFile()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.OS).To(Equal("linux"))
	g.Expect(cfg.Architecture).To(Equal("amd64"))
	layers, err := img.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.RootFS.DiffIDs).To(HaveLen(len(layers)))
	g.Expect(cfg.History).To(HaveLen(len(layers)))
	for i, l := range layers {
		g.Expect(m.Layers[i].MediaType).To(Equal(types.OCILayer))
		rc, err := l.Uncompressed()
		g.Expect(err).NotTo(HaveOccurred())
		h, _, err := v1.SHA256(rc)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(rc.Close()).To(Succeed())
		g.Expect(cfg.RootFS.DiffIDs[i]).To(Equal(h), "layer %d", i)
	}
}

func TestLayerFromFiles(t *testing.T) {
	g := NewWithT(t)
	files := map[string][]byte{"b/c/file.txt": []byte("c"), "a.txt": []byte("a"), "b/d.txt": []byte("d")}
	l1, err := LayerFromFiles(files)
	g.Expect(err).NotTo(HaveOccurred())
	l2, err := LayerFromFiles(files)
	g.Expect(err).NotTo(HaveOccurred())
	d1, _ := l1.Digest()
	d2, _ := l2.Digest()
	g.Expect(d1).To(Equal(d2), "deterministic")

	got, order := layerFiles(t, l1)
	g.Expect(order).To(Equal([]string{"a.txt", "b/", "b/c/", "b/c/file.txt", "b/d.txt"}))
	g.Expect(got["b/"].typeflag).To(Equal(byte(tar.TypeDir)))
	g.Expect(got["b/c/file.txt"].typeflag).To(Equal(byte(tar.TypeReg)))
	g.Expect(got["b/c/file.txt"].mode).To(Equal(int64(0o644)))
	g.Expect(string(got["b/d.txt"].data)).To(Equal("d"))

	for _, bad := range []string{"../x", "/etc/passwd", "a/../../x", ""} {
		_, err := LayerFromFiles(map[string][]byte{bad: nil})
		g.Expect(err).To(HaveOccurred(), "%q", bad)
	}
}

func TestAlpineImage(t *testing.T) {
	g := NewWithT(t)
	img, err := AlpineImage("3.22.1", []APKPackage{
		{Name: "libcrypto3", Version: "3.5.1-r0", Origin: "openssl"},
		{Name: "musl", Version: "1.2.5-r10", Arch: "aarch64"},
	})
	g.Expect(err).NotTo(HaveOccurred())
	expectWellFormed(g, img)

	files := imageFiles(t, img)
	g.Expect(string(files["etc/alpine-release"].data)).To(Equal("3.22.1\n"))
	g.Expect(string(files["etc/os-release"].data)).To(And(ContainSubstring("\nID=alpine\n"), ContainSubstring("VERSION_ID=3.22.1\n")))
	g.Expect(string(files["lib/apk/db/installed"].data)).To(Equal(
		"P:libcrypto3\nV:3.5.1-r0\nA:x86_64\no:openssl\n\n" +
			"P:musl\nV:1.2.5-r10\nA:aarch64\no:musl\n\n"))
}

func TestDebianImage(t *testing.T) {
	g := NewWithT(t)
	img, err := DebianImage("12.7", []DebPackage{
		{Name: "libssl3", Version: "3.0.15-1~deb12u1", Source: "openssl"},
		{Name: "libc6", Version: "2.36-9+deb12u7"},
		{Name: "libfoo1", Version: "1:1.0-1+b1", Source: "foo", SourceVersion: "1:1.0-1"},
	})
	g.Expect(err).NotTo(HaveOccurred())
	expectWellFormed(g, img)

	files := imageFiles(t, img)
	g.Expect(string(files["etc/debian_version"].data)).To(Equal("12.7\n"))
	g.Expect(string(files["etc/os-release"].data)).To(And(ContainSubstring("\nID=debian\n"), ContainSubstring(`VERSION_ID="12"`)))

	// Split and parse the way Trivy's dpkg analyzer does: blank-line stanzas as MIME headers.
	var stanzas []textproto.MIMEHeader
	for _, s := range strings.Split(strings.TrimSpace(string(files["var/lib/dpkg/status"].data)), "\n\n") {
		h, err := textproto.NewReader(bufio.NewReader(strings.NewReader(s + "\n\n"))).ReadMIMEHeader()
		g.Expect(err).NotTo(HaveOccurred())
		stanzas = append(stanzas, h)
	}
	g.Expect(stanzas).To(HaveLen(3))
	for _, h := range stanzas {
		g.Expect(h.Get("Status")).To(Equal("install ok installed"))
		g.Expect(h.Get("Architecture")).To(Equal("amd64"))
	}
	g.Expect(stanzas[0].Get("Package")).To(Equal("libssl3"))
	g.Expect(stanzas[0].Get("Source")).To(Equal("openssl"))
	g.Expect(stanzas[0].Get("Version")).To(Equal("3.0.15-1~deb12u1"))
	g.Expect(stanzas[1].Values("Source")).To(BeEmpty(), "source defaults to the package")
	g.Expect(stanzas[2].Get("Source")).To(Equal("foo (1:1.0-1)"))
	g.Expect(stanzas[2].Get("Version")).To(Equal("1:1.0-1+b1"))
}

func TestNPMImage(t *testing.T) {
	g := NewWithT(t)
	base, err := LayerFromFiles(map[string][]byte{"etc/hostname": []byte("node\n")})
	g.Expect(err).NotTo(HaveOccurred())
	img, err := NPMImage([]v1.Layer{base}, []NPMPackage{
		{Name: "lodash", Version: "4.17.20"},
		{Name: "@babel/core", Version: "7.20.0"},
	})
	g.Expect(err).NotTo(HaveOccurred())
	expectWellFormed(g, img)
	layers, err := img.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(layers).To(HaveLen(2))

	files := imageFiles(t, img)
	g.Expect(files).To(HaveKey("etc/hostname"))
	g.Expect(files["app/node_modules/lodash/package.json"].data).To(MatchJSON(`{"name":"lodash","version":"4.17.20"}`))
	g.Expect(files["app/node_modules/@babel/core/package.json"].data).To(MatchJSON(`{"name":"@babel/core","version":"7.20.0"}`))
}

func TestPaddingLayer(t *testing.T) {
	g := NewWithT(t)
	const size = 1 << 20
	a, b, c := PaddingLayer(size, 1), PaddingLayer(size, 1), PaddingLayer(size, 2)
	da, _ := a.Digest()
	db, _ := b.Digest()
	dc, _ := c.Digest()
	g.Expect(da).To(Equal(db))
	g.Expect(da).NotTo(Equal(dc))
	compressed, err := a.Size()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(compressed).To(BeNumerically(">=", size), "incompressible")
	files, _ := layerFiles(t, a)
	g.Expect(files["opt/padding/1.bin"].data).To(HaveLen(size))
}

func TestDecompressionBombLayer(t *testing.T) {
	t.Run("large: tiny blob, bounded read", func(t *testing.T) {
		g := NewWithT(t)
		const claimed = int64(4) << 30
		l := DecompressionBombLayer(claimed)
		size, err := l.Size()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(size).To(BeNumerically("<", claimed/500))
		mt, err := l.MediaType()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(mt).To(Equal(types.OCILayer))

		rc, err := l.Compressed()
		g.Expect(err).NotTo(HaveOccurred())
		defer rc.Close()
		zr, err := gzip.NewReader(rc)
		g.Expect(err).NotTo(HaveOccurred())
		tr := tar.NewReader(zr)
		hdr, err := tr.Next()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(hdr.Name).To(Equal(BombFile))
		g.Expect(hdr.Size).To(Equal(claimed))
		prefix, err := io.ReadAll(io.LimitReader(tr, 16<<20))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(prefix).To(HaveLen(16 << 20))
		g.Expect(bytes.Count(prefix, []byte{0})).To(Equal(len(prefix)))
	})

	t.Run("small: valid stream and diff ID", func(t *testing.T) {
		g := NewWithT(t)
		// Not a multiple of the chunk or of 512, to cover the tail member and tar padding.
		const claimed = int64(9<<20 + 123)
		l := DecompressionBombLayer(claimed)
		rc, err := l.Compressed()
		g.Expect(err).NotTo(HaveOccurred())
		compressed, err := io.ReadAll(rc)
		g.Expect(err).NotTo(HaveOccurred())
		size, _ := l.Size()
		g.Expect(compressed).To(HaveLen(int(size)))
		digest, _ := l.Digest()
		g.Expect(digest.String()).To(Equal(fmt.Sprintf("sha256:%x", sha256.Sum256(compressed))))

		zr, err := gzip.NewReader(bytes.NewReader(compressed))
		g.Expect(err).NotTo(HaveOccurred())
		tarBytes, err := io.ReadAll(zr)
		g.Expect(err).NotTo(HaveOccurred())
		diffID, err := l.DiffID()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(diffID.String()).To(Equal(fmt.Sprintf("sha256:%x", sha256.Sum256(tarBytes))))

		tr := tar.NewReader(bytes.NewReader(tarBytes))
		hdr, err := tr.Next()
		g.Expect(err).NotTo(HaveOccurred())
		n, err := io.Copy(io.Discard, tr)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(n).To(Equal(hdr.Size))
		g.Expect(n).To(Equal(claimed))
		_, err = tr.Next()
		g.Expect(err).To(MatchError(io.EOF), "proper end-of-archive marker")

		img, err := ImageFromLayers(LinuxAMD64, l)
		g.Expect(err).NotTo(HaveOccurred())
		expectWellFormed(g, img)
	})
}

func TestPathTraversalLayer(t *testing.T) {
	g := NewWithT(t)
	// Read the headers without archive/tar's insecure-path check getting in the way.
	t.Setenv("GODEBUG", "tarinsecurepath=1")
	_, order := layerFiles(t, PathTraversalLayer())
	g.Expect(order).To(ContainElements("../../etc/passwd", "app/../../x", "/etc/cron.d/evil", "app/ok"))
}

func TestGoBinaryImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go program")
	}
	g := NewWithT(t)
	img := GoBinaryImage(t, DefaultGoModules)
	expectWellFormed(g, img)
	again := GoBinaryImage(t, DefaultGoModules)
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	g.Expect(d1).To(Equal(d2), "cached build")

	files := imageFiles(t, img)
	g.Expect(files).To(HaveKey(GoBinaryPath))
	bin := files[GoBinaryPath]
	g.Expect(bin.mode).To(Equal(int64(0o755)))
	p := filepath.Join(t.TempDir(), "app")
	g.Expect(os.WriteFile(p, bin.data, 0o755)).To(Succeed())
	info, err := buildinfo.ReadFile(p)
	g.Expect(err).NotTo(HaveOccurred())
	var deps []string
	for _, d := range info.Deps {
		deps = append(deps, d.Path+"@"+d.Version)
	}
	g.Expect(deps).To(ContainElement("golang.org/x/text@v0.3.7"))
}

func TestDebianFilesUnpacksARealPackage(t *testing.T) {
	pkg, err := DebianFiles(context.Background(), "python3-requests")
	if err != nil {
		t.Fatal(err)
	}
	var metadata string
	for p := range pkg.Files {
		if strings.HasSuffix(p, "/PKG-INFO") || strings.HasSuffix(p, "/METADATA") {
			metadata = p
		}
	}
	if pkg.Version == "" || metadata == "" {
		t.Fatalf("python3-requests %s: no package metadata among %d files", pkg.Version, len(pkg.Files))
	}
	t.Logf("python3-requests %s: %s", pkg.Version, metadata)
}
