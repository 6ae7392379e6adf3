package testutil

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ulikunitz/xz"
)

// DebianSuite is the Debian release DebianFiles takes packages from.
const DebianSuite = "bookworm"

// debianMirror is where Debian's packages come from; IMAGEGUARD_DEBIAN_MIRROR overrides it.
func debianMirror() string {
	if m := os.Getenv("IMAGEGUARD_DEBIAN_MIRROR"); m != "" {
		return strings.TrimRight(m, "/")
	}
	return "https://deb.debian.org/debian"
}

// Bounds of what DebianFiles downloads and unpacks.
const (
	maxDebianIndexBytes   = 64 << 20
	maxDebianPackageBytes = 64 << 20
	maxDebianFileBytes    = 64 << 20
	debianIndexMaxAge     = 7 * 24 * time.Hour
)

// DebianPackage is a package of Debian's archive, unpacked: its regular files by path (without
// a leading slash), as dpkg would install them.
type DebianPackage struct {
	Name, Version, Architecture string
	Files                       map[string][]byte
	// Modes are the files' permission bits; Links the symbolic links, path to target.
	Modes map[string]int64
	Links map[string]string
}

// DebianFiles downloads Debian's package name (DebianSuite, amd64 or all) and returns its files.
// The package is checked against the SHA-256 of the archive's index (itself checked against the
// Release file, fetched over HTTPS) and kept in the user's cache folder
// ($XDG_CACHE_HOME/imageguard/debian/<suite>/), so that later runs need no network.
func DebianFiles(ctx context.Context, name string) (*DebianPackage, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(base, "imageguard", "debian", DebianSuite)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	deb, version, arch, err := keptDeb(dir, name)
	if err != nil {
		entry, err := debianIndexEntry(ctx, dir, name)
		if err != nil {
			return nil, err
		}
		if deb, err = download(ctx, debianMirror()+"/"+entry["Filename"], maxDebianPackageBytes, entry["SHA256"]); err != nil {
			return nil, fmt.Errorf("debian package %s: %w", name, err)
		}
		version, arch = entry["Version"], entry["Architecture"]
		meta := fmt.Sprintf("%s\n%s\n%s\n", entry["SHA256"], version, arch)
		if err := writeAtomic(filepath.Join(dir, name+".deb"), deb); err != nil {
			return nil, err
		}
		if err := writeAtomic(filepath.Join(dir, name+".deb.meta"), []byte(meta)); err != nil {
			return nil, err
		}
	}
	pkg := &DebianPackage{Name: name, Version: version, Architecture: arch}
	if err := debData(deb, pkg); err != nil {
		return nil, fmt.Errorf("debian package %s: %w", name, err)
	}
	return pkg, nil
}

// keptDeb returns the package the cache holds for name, when its hash is what was recorded.
func keptDeb(dir, name string) (deb []byte, version, arch string, err error) {
	meta, err := os.ReadFile(filepath.Join(dir, name+".deb.meta"))
	if err != nil {
		return nil, "", "", err
	}
	lines := strings.Split(strings.TrimSpace(string(meta)), "\n")
	if len(lines) != 3 {
		return nil, "", "", errors.New("malformed cache entry")
	}
	deb, err = os.ReadFile(filepath.Join(dir, name+".deb"))
	if err != nil {
		return nil, "", "", err
	}
	if sum := sha256.Sum256(deb); hex.EncodeToString(sum[:]) != lines[0] {
		return nil, "", "", errors.New("cached package does not match its hash")
	}
	return deb, lines[1], lines[2], nil
}

// debianIndexEntry returns the stanza of name in the suite's main amd64 index.
func debianIndexEntry(ctx context.Context, dir, name string) (map[string]string, error) {
	indexPath := filepath.Join(dir, "Packages")
	fi, err := os.Stat(indexPath)
	if err != nil || time.Since(fi.ModTime()) > debianIndexMaxAge {
		if err := fetchDebianIndex(ctx, indexPath); err != nil {
			return nil, err
		}
	}
	f, err := os.Open(indexPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	stanza := map[string]string{}
	var last string
	for {
		more := sc.Scan()
		line := sc.Text()
		if !more || line == "" {
			if stanza["Package"] == name && (stanza["Architecture"] == "amd64" || stanza["Architecture"] == "all") {
				return stanza, nil
			}
			if !more {
				break
			}
			stanza, last = map[string]string{}, ""
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			stanza[last] += "\n" + line
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			last = k
			stanza[k] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("debian package %s is not in %s main amd64", name, DebianSuite)
}

// fetchDebianIndex downloads the suite's main amd64 Packages.xz, checked against the Release
// file's SHA-256, and writes it unpacked to dst.
func fetchDebianIndex(ctx context.Context, dst string) error {
	mirror := debianMirror()
	release, err := download(ctx, mirror+"/dists/"+DebianSuite+"/Release", maxDebianIndexBytes, "")
	if err != nil {
		return fmt.Errorf("debian release file: %w", err)
	}
	const want = "main/binary-amd64/Packages.xz"
	var sum string
	inSHA256 := false
	for line := range strings.SplitSeq(string(release), "\n") {
		if !strings.HasPrefix(line, " ") {
			inSHA256 = strings.HasPrefix(line, "SHA256:")
			continue
		}
		if f := strings.Fields(line); inSHA256 && len(f) == 3 && f[2] == want {
			sum = f[0]
		}
	}
	if sum == "" {
		return fmt.Errorf("debian release file lists no SHA-256 for %s", want)
	}
	packed, err := download(ctx, mirror+"/dists/"+DebianSuite+"/"+want, maxDebianIndexBytes, sum)
	if err != nil {
		return fmt.Errorf("debian index: %w", err)
	}
	r, err := xz.NewReader(bytes.NewReader(packed))
	if err != nil {
		return err
	}
	index, err := io.ReadAll(io.LimitReader(r, 8*maxDebianIndexBytes))
	if err != nil {
		return err
	}
	return writeAtomic(dst, index)
}

// download GETs url, at most maxBytes, and checks its SHA-256 when sum is set.
func download(ctx context.Context, url string, maxBytes int64, sum string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > maxBytes {
		return nil, fmt.Errorf("GET %s: more than %d bytes", url, maxBytes)
	}
	if sum != "" {
		if got := sha256.Sum256(body); hex.EncodeToString(got[:]) != sum {
			return nil, fmt.Errorf("GET %s: SHA-256 %x, the index says %s", url, got, sum)
		}
	}
	return body, nil
}

func writeAtomic(dst string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".tmp-"+filepath.Base(dst))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// debData reads the regular files and links of a .deb's data archive (an ar archive holding
// data.tar.xz, .gz or plain) into pkg.
func debData(deb []byte, pkg *DebianPackage) error {
	const magic = "!<arch>\n"
	if !bytes.HasPrefix(deb, []byte(magic)) {
		return errors.New("not an ar archive")
	}
	rest := deb[len(magic):]
	for len(rest) >= 60 {
		hdr := rest[:60]
		member := strings.TrimRight(strings.TrimSpace(string(hdr[:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 || size > int64(len(rest)-60) {
			return fmt.Errorf("ar member %q: bad size", member)
		}
		body := rest[60 : 60+size]
		rest = rest[60+size:]
		if size%2 == 1 && len(rest) > 0 {
			rest = rest[1:]
		}
		if !strings.HasPrefix(member, "data.tar") {
			continue
		}
		var r io.Reader = bytes.NewReader(body)
		switch path.Ext(member) {
		case ".xz":
			if r, err = xz.NewReader(r); err != nil {
				return err
			}
		case ".gz":
			if r, err = gzip.NewReader(r); err != nil {
				return err
			}
		case ".tar":
		default:
			return fmt.Errorf("data archive %s: compression not supported", member)
		}
		return tarFiles(tar.NewReader(r), pkg)
	}
	return errors.New("no data archive")
}

func tarFiles(tr *tar.Reader, pkg *DebianPackage) error {
	pkg.Files, pkg.Modes, pkg.Links = map[string][]byte{}, map[string]int64{}, map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		switch h.Typeflag {
		case tar.TypeSymlink:
			pkg.Links[name] = h.Linkname
			continue
		case tar.TypeReg:
		default:
			continue
		}
		if h.Size > maxDebianFileBytes {
			return fmt.Errorf("%s: %d bytes, more than %d", h.Name, h.Size, maxDebianFileBytes)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		pkg.Files[name], pkg.Modes[name] = data, h.Mode&0o777
	}
}
