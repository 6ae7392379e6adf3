package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fixtureTime stamps tar entries, configs and history so that the same inputs always give the same
// digests; tests can then compare digests across builds.
var fixtureTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// LinuxAMD64 is the platform of every fixture image unless a test asks for another.
var LinuxAMD64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// fileEntry is one regular file of a layer.
type fileEntry struct {
	data []byte
	mode int64
}

// LayerFromFiles builds a gzip-compressed OCI layer holding the given regular files (mode 0644),
// keyed by slash-separated paths relative to the image root. Parent directories are added as
// directory entries, as real layers have them, and entries are sorted so equal maps give equal
// digests. Absolute paths and ".." are rejected: hostile layers are built by PathTraversalLayer.
func LayerFromFiles(files map[string][]byte) (v1.Layer, error) {
	entries := make(map[string]fileEntry, len(files))
	for p, data := range files {
		entries[p] = fileEntry{data: data, mode: 0o644}
	}
	return layerFromEntries(entries)
}

func layerFromEntries(files map[string]fileEntry) (v1.Layer, error) {
	clean := make(map[string]fileEntry, len(files))
	dirs := map[string]bool{}
	for p, f := range files {
		c := path.Clean(p)
		if p == "" || path.IsAbs(p) || c == "." || c == ".." || strings.HasPrefix(c, "../") {
			return nil, fmt.Errorf("layer file %q: need a relative path inside the image", p)
		}
		clean[c] = f
		for d := path.Dir(c); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		if _, ok := clean[d]; ok {
			return nil, fmt.Errorf("layer path %q is both a file and a directory", d)
		}
	}

	names := make([]string, 0, len(clean)+len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	for f := range clean {
		names = append(names, f)
	}
	// Sorting full paths puts every directory before its contents.
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		hdr := &tar.Header{Name: n, ModTime: fixtureTime, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		f, isFile := clean[n]
		if isFile {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, f.mode, int64(len(f.data))
		} else {
			hdr.Typeflag, hdr.Mode, hdr.Name = tar.TypeDir, 0o755, n+"/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar header %s: %w", n, err)
		}
		if isFile {
			if _, err := tw.Write(f.data); err != nil {
				return nil, fmt.Errorf("tar data %s: %w", n, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close tar: %w", err)
	}
	return gzipLayer(buf.Bytes())
}

// gzipLayer compresses a tar stream once and lets tarball.LayerFromOpener derive the digest (of
// the gzip bytes) and the diff ID (of the tar), so the config's RootFS always matches the blobs.
func gzipLayer(tarBytes []byte) (v1.Layer, error) {
	var gz bytes.Buffer
	// BestSpeed: fixtures are small or deliberately incompressible, and the CI machine is shared.
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(tarBytes); err != nil {
		return nil, fmt.Errorf("gzip layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("gzip layer: %w", err)
	}
	b := gz.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// ImageFromLayers builds an OCI image of the given layers (base first) for platform, with a
// history entry per layer. The config's RootFS diff IDs come from the layers themselves.
func ImageFromLayers(platform v1.Platform, layers ...v1.Layer) (v1.Image, error) {
	cfg := &v1.ConfigFile{
		Architecture: platform.Architecture,
		OS:           platform.OS,
		OSVersion:    platform.OSVersion,
		Variant:      platform.Variant,
		Created:      v1.Time{Time: fixtureTime},
		Config: v1.Config{
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	adds := make([]mutate.Addendum, 0, len(layers))
	for i, l := range layers {
		adds = append(adds, mutate.Addendum{
			Layer: l,
			History: v1.History{
				Created:   v1.Time{Time: fixtureTime},
				CreatedBy: fmt.Sprintf("testutil: layer %d", i),
				Comment:   "built in memory by internal/testutil",
			},
		})
	}
	img, err = mutate.Append(img, adds...)
	if err != nil {
		return nil, fmt.Errorf("append layers: %w", err)
	}
	return img, nil
}

// IndexFromImages builds a multi-platform OCI index of imgs, taking each entry's platform from the
// image's config (as ImageFromLayers sets it), for PushIndex.
func IndexFromImages(imgs ...v1.Image) (v1.ImageIndex, error) {
	adds := make([]mutate.IndexAddendum, 0, len(imgs))
	for i, img := range imgs {
		cfg, err := img.ConfigFile()
		if err != nil {
			return nil, fmt.Errorf("config of image %d: %w", i, err)
		}
		adds = append(adds, mutate.IndexAddendum{
			Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{
				OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant, OSVersion: cfg.OSVersion,
			}},
		})
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx, adds...), nil
}

// APKPackage is one entry of Alpine's installed-packages database.
type APKPackage struct {
	Name    string
	Version string // e.g. "3.3.1-r0"
	// Origin is the source package that Trivy looks advisories up by; empty means Name.
	Origin string
	// Arch defaults to "x86_64".
	Arch string
}

// AlpineImage builds a single-layer Alpine image (version such as "3.22.1"; Trivy's bucket is
// "alpine <major.minor>") with the given packages in lib/apk/db/installed.
//
// Trivy identifies the OS from etc/alpine-release (etc/os-release with ID=alpine also works) and
// reads packages from lib/apk/db/installed, one paragraph per package separated by a blank line:
// P: name, V: version, A: arch and o: origin. o: must follow V: because the apk analyzer takes the
// source version from the V: line seen last.
func AlpineImage(version string, pkgs []APKPackage) (v1.Image, error) {
	var db strings.Builder
	for _, p := range pkgs {
		if p.Name == "" || p.Version == "" {
			return nil, fmt.Errorf("apk package %+v: name and version are required", p)
		}
		fmt.Fprintf(&db, "P:%s\nV:%s\nA:%s\no:%s\n\n", p.Name, p.Version, or(p.Arch, "x86_64"), or(p.Origin, p.Name))
	}
	layer, err := LayerFromFiles(map[string][]byte{
		"etc/alpine-release": []byte(version + "\n"),
		"etc/os-release": fmt.Appendf(nil,
			"NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=%s\nPRETTY_NAME=\"Alpine Linux v%s\"\nHOME_URL=\"https://alpinelinux.org/\"\n",
			version, majorMinor(version)),
		"lib/apk/db/installed": []byte(db.String()),
	})
	if err != nil {
		return nil, err
	}
	return ImageFromLayers(LinuxAMD64, layer)
}

// DebPackage is one entry of dpkg's status database.
type DebPackage struct {
	Name    string
	Version string // e.g. "3.0.15-1~deb12u1" or with an epoch "1:2.38.1-5"
	// Source is the source package, the key of Debian advisories; empty means Name.
	Source string
	// SourceVersion is the source package's version when it differs from Version (binNMUs).
	SourceVersion string
	// Arch defaults to "amd64".
	Arch string
}

// DebianImage builds a single-layer Debian image (version such as "12.7"; Trivy's bucket is
// "debian <major>") with the given packages in var/lib/dpkg/status.
//
// Trivy identifies Debian only from etc/debian_version (its os-release analyzer ignores ID=debian),
// and its dpkg analyzer reads stanzas separated by a blank line, skipping any whose Status contains
// "deinstall" or "purge" and any without Package and Version. "Source: name (version)" supplies the
// source name and version; without it both default to the binary package's.
func DebianImage(version string, pkgs []DebPackage) (v1.Image, error) {
	var status strings.Builder
	for _, p := range pkgs {
		if p.Name == "" || p.Version == "" {
			return nil, fmt.Errorf("deb package %+v: name and version are required", p)
		}
		fmt.Fprintf(&status, "Package: %s\nStatus: install ok installed\nPriority: optional\n", p.Name)
		fmt.Fprintf(&status, "Maintainer: Debian Fixtures <fixtures@debian.invalid>\nArchitecture: %s\n", or(p.Arch, "amd64"))
		src := or(p.Source, p.Name)
		srcVersion := or(p.SourceVersion, p.Version)
		switch {
		case srcVersion != p.Version:
			fmt.Fprintf(&status, "Source: %s (%s)\n", src, srcVersion)
		case src != p.Name:
			fmt.Fprintf(&status, "Source: %s\n", src)
		}
		fmt.Fprintf(&status, "Version: %s\nDescription: %s test fixture\n\n", p.Version, p.Name)
	}
	major, _, _ := strings.Cut(version, ".")
	osRelease := fmt.Sprintf("PRETTY_NAME=\"Debian GNU/Linux %[1]s\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"%[1]s\"\nID=debian\n", major)
	if codename := debianCodenames[major]; codename != "" {
		osRelease += fmt.Sprintf("VERSION=\"%s (%s)\"\nVERSION_CODENAME=%s\n", major, codename, codename)
	}
	layer, err := LayerFromFiles(map[string][]byte{
		"etc/debian_version":  []byte(version + "\n"),
		"etc/os-release":      []byte(osRelease),
		"var/lib/dpkg/status": []byte(status.String()),
	})
	if err != nil {
		return nil, err
	}
	return ImageFromLayers(LinuxAMD64, layer)
}

var debianCodenames = map[string]string{
	"10": "buster", "11": "bullseye", "12": "bookworm", "13": "trixie", "14": "forky",
}

// NPMPackage is one installed npm package.
type NPMPackage struct {
	Name    string // e.g. "lodash" or "@babel/core"
	Version string
}

// NPMImage builds an image of base (may be nil) plus a layer with
// app/node_modules/<name>/package.json for each package. Trivy's node-pkg analyzer reads any
// package.json that has both "name" and "version"; under node_modules it counts only a package's
// root file (node_modules/<name>/ or node_modules/@scope/<name>/), which these paths are.
func NPMImage(base []v1.Layer, pkgs []NPMPackage) (v1.Image, error) {
	files := make(map[string][]byte, len(pkgs))
	for _, p := range pkgs {
		if p.Name == "" || p.Version == "" {
			return nil, fmt.Errorf("npm package %+v: name and version are required", p)
		}
		b, err := json.MarshalIndent(map[string]string{"name": p.Name, "version": p.Version}, "", "  ")
		if err != nil {
			return nil, err
		}
		files["app/node_modules/"+p.Name+"/package.json"] = append(b, '\n')
	}
	layer, err := LayerFromFiles(files)
	if err != nil {
		return nil, err
	}
	return ImageFromLayers(LinuxAMD64, append(append([]v1.Layer{}, base...), layer)...)
}

// PaddingLayer returns a layer with one file of size pseudo-random bytes derived from seed. The
// bytes do not compress, so the layer weighs what it says (the ~20 MB benchmark image); different
// seeds give different digests.
func PaddingLayer(size int, seed int64) v1.Layer {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], uint64(seed))
	data := make([]byte, size)
	_, _ = rand.NewChaCha8(key).Read(data)
	l, err := LayerFromFiles(map[string][]byte{fmt.Sprintf("opt/padding/%d.bin", seed): data})
	if err != nil {
		panic(fmt.Sprintf("testutil: padding layer: %v", err)) // in-memory only; cannot fail
	}
	return l
}

// PathTraversalLayer returns a layer whose entries try to escape the image root: "../../etc/passwd",
// "app/../../x" and an absolute "/etc/cron.d/evil", next to one benign file "app/ok". A scanner must
// neither write nor read outside its extraction directory because of them.
func PathTraversalLayer() v1.Layer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range []string{"app/ok", "../../etc/passwd", "app/../../x", "/etc/cron.d/evil"} {
		body := []byte("testutil: " + n + "\n")
		hdr := &tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body)), ModTime: fixtureTime}
		if err := tw.WriteHeader(hdr); err != nil {
			panic(fmt.Sprintf("testutil: path traversal layer: %v", err))
		}
		_, _ = tw.Write(body)
	}
	if err := tw.Close(); err != nil {
		panic(fmt.Sprintf("testutil: path traversal layer: %v", err))
	}
	l, err := gzipLayer(buf.Bytes())
	if err != nil {
		panic(fmt.Sprintf("testutil: path traversal layer: %v", err))
	}
	return l
}

// BombFile is the path of the single file inside a DecompressionBombLayer.
const BombFile = "bomb/zeros"

// bombChunk is the run of zeros compressed once and repeated; deflate cannot beat ~1:1030 on zeros,
// so the chunk size only trades member overhead against setup time.
const bombChunk = 4 << 20

// DecompressionBombLayer returns a layer whose tar holds one file, BombFile, of uncompressed zero
// bytes, while the gzip blob stays about uncompressed/1000 bytes. Nothing is ever expanded in
// memory: the blob is a concatenation of gzip members (valid per RFC 1952, read by Go's
// compress/gzip) — the tar header, one precompressed chunk repeated, and the remainder —
// streamed on demand. The diff ID is computed lazily by hashing the stream, only if asked for
// (ImageFromLayers and pushing do ask, reading the layer does not).
func DecompressionBombLayer(uncompressed int64) v1.Layer {
	return CompressibleFileLayer(BombFile, uncompressed, []byte{0})
}

// CompressibleFileLayer is DecompressionBombLayer with its one file at name, its content
// pattern repeated to size bytes (a hostile package database: `Package: p` stanzas over and
// over). len(pattern) must divide 4 MiB.
func CompressibleFileLayer(name string, size int64, pattern []byte) v1.Layer {
	if size < 0 || len(pattern) == 0 || bombChunk%len(pattern) != 0 {
		panic("testutil: a negative size, or a pattern whose length does not divide 4 MiB")
	}
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	if err := tw.WriteHeader(&tar.Header{
		Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: fixtureTime,
	}); err != nil {
		panic(fmt.Sprintf("testutil: bomb header: %v", err))
	}
	chunk := bytes.Repeat(pattern, bombChunk/len(pattern))
	// After the file: zeros, its padding to 512 bytes and the 1024-byte end-of-archive marker
	// that tw.Close would write.
	rest := size % bombChunk
	pad := (512-size%512)%512 + 1024
	l := &bombLayer{
		tarHeader: hdr.Bytes(),
		pattern:   pattern,
		size:      size,
		pad:       pad,
		head:      gzipMember(hdr.Bytes()),
		chunk:     gzipMember(chunk),
		chunks:    size / bombChunk,
		tail:      gzipMember(append(append([]byte{}, chunk[:rest]...), make([]byte, pad)...)),
	}
	var err error
	if l.digest, l.blobSize, err = v1.SHA256(l.compressed()); err != nil {
		panic(fmt.Sprintf("testutil: bomb digest: %v", err))
	}
	return l
}

func gzipMember(data []byte) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	_, _ = zw.Write(data)
	_ = zw.Close()
	return buf.Bytes()
}

// bombLayer implements v1.Layer for CompressibleFileLayer.
type bombLayer struct {
	tarHeader []byte
	pattern   []byte
	size, pad int64

	head, chunk, tail []byte
	chunks            int64

	digest   v1.Hash
	blobSize int64

	diffIDOnce sync.Once
	diffID     v1.Hash
	diffIDErr  error
}

func (l *bombLayer) compressed() io.Reader {
	return io.MultiReader(bytes.NewReader(l.head), &repeatReader{b: l.chunk, n: l.chunks}, bytes.NewReader(l.tail))
}

func (l *bombLayer) uncompressed() io.Reader {
	content := io.LimitReader(&repeatReader{b: l.pattern, n: (l.size + int64(len(l.pattern)) - 1) / int64(len(l.pattern))}, l.size)
	return io.MultiReader(bytes.NewReader(l.tarHeader), content, io.LimitReader(zeroReader{}, l.pad))
}

func (l *bombLayer) Digest() (v1.Hash, error) { return l.digest, nil }

func (l *bombLayer) DiffID() (v1.Hash, error) {
	l.diffIDOnce.Do(func() {
		h := sha256.New()
		if _, err := io.Copy(h, l.uncompressed()); err != nil {
			l.diffIDErr = err
			return
		}
		l.diffID = v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
	})
	return l.diffID, l.diffIDErr
}

func (l *bombLayer) Compressed() (io.ReadCloser, error) { return io.NopCloser(l.compressed()), nil }

func (l *bombLayer) Uncompressed() (io.ReadCloser, error) { return io.NopCloser(l.uncompressed()), nil }

func (l *bombLayer) Size() (int64, error) { return l.blobSize, nil }

func (l *bombLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

// repeatReader yields b n times.
type repeatReader struct {
	b   []byte
	n   int64
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	total := 0
	for len(p) > 0 && r.n > 0 {
		c := copy(p, r.b[r.off:])
		p, total, r.off = p[c:], total+c, r.off+c
		if r.off == len(r.b) {
			r.off, r.n = 0, r.n-1
		}
	}
	if total == 0 && r.n == 0 {
		return 0, io.EOF
	}
	return total, nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func or(s, fallback string) string {
	if s == "" {
		return fallback
	}
	return s
}

func majorMinor(version string) string {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return version
	}
	return parts[0] + "." + parts[1]
}
