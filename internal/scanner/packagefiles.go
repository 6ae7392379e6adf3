package scanner

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"path"
	"strings"
	"sync"

	"github.com/aquasecurity/trivy/pkg/fanal/analyzer"
	xio "github.com/aquasecurity/trivy/pkg/x/io"
)

// packageFiles says which files of a layer Trivy's analyzers parse into packages held in memory,
// by asking an analyzer group built with the analysis' own options (the binary analyzers aside:
// what they keep of an executable is its build information, and Trivy holds the file itself in
// memory only under 100 MB). Asking Trivy, rather than keeping a list of names, keeps the bound
// complete when an upgrade adds an analyzer.
type packageFiles struct {
	group analyzer.AnalyzerGroup
}

var packageFileOracle = sync.OnceValues(func() (*packageFiles, error) {
	g, err := analyzer.NewAnalyzerGroup(analyzer.AnalyzerOptions{
		Parallel:          1,
		DisabledAnalyzers: append(disabledAnalyzers(""), analyzer.TypeGoBinary, analyzer.TypeRustBinary, typeJavaArchives),
	})
	if err != nil {
		return nil, err
	}
	return &packageFiles{group: g}, nil
})

var errWanted = errors.New("an analyzer wants this file")

// wanted reports whether an analyzer or post-analyzer would read the file hdr describes.
func (p *packageFiles) wanted(name string, hdr *tar.Header) bool {
	info := hdr.FileInfo()
	if len(p.group.RequiredPostAnalyzers(name, info)) > 0 {
		return true
	}
	// AnalyzeFile opens the file only for an analyzer that requires it: the opener's error says so,
	// and nothing is analysed.
	err := p.group.AnalyzeFile(context.Background(), nil, nil, nil, "", name, info,
		func() (xio.ReadSeekCloserAt, error) { return nil, errWanted }, nil, analyzer.AnalysisOptions{})
	return errors.Is(err, errWanted)
}

// isRPMDB reports whether name is an rpm database: binary, each package a header of kilobytes.
func isRPMDB(name string) bool {
	switch path.Base(name) {
	case "Packages", "Packages.db", "rpmdb.sqlite":
		return strings.HasPrefix(name, "var/lib/rpm/") || strings.HasPrefix(name, "usr/lib/sysimage/rpm/")
	}
	return false
}

// onePackagePerFile reports whether the file at name describes one package: a package.json, a
// Python distribution's metadata, a gemspec, a conda package's metadata.
func onePackagePerFile(name string) bool {
	base := path.Base(name)
	switch {
	case base == "package.json", base == "METADATA", base == "PKG-INFO", strings.HasSuffix(base, ".gemspec"):
		return true
	case path.Base(path.Dir(name)) == "conda-meta" && strings.HasSuffix(base, ".json"):
		return true
	}
	return false
}

// rpmHeaderBytes is what an rpm database spends on a package, for the estimate: real ones spend
// 40 to 110 KiB (CentOS 7: 144 packages in 16 MB), and every layer that installs packages
// rewrites the whole database. The estimate is a first, cheap refusal; the analysis worker's
// memory bound is what holds whatever the database says.
const rpmHeaderBytes = 16 << 10

// packageCounter estimates, from a file's bytes, how many packages Trivy's parser will make of
// it, from above: the count of what starts an entry in its format, or for a format it does not
// know, of what starts an object ('{', '<') and at least one.
type packageCounter struct {
	// marker starts an entry at the beginning of a line ("Package:" in dpkg's status); empty:
	// count objects.
	marker []byte
	// perBytes, when set, estimates one package per that many bytes (binary formats).
	perBytes int64
	// perFile: the file describes one package.
	perFile bool

	// matching: the current line's first matched bytes equal the marker's so far.
	matching bool
	matched  int
	count    int64
	size     int64
}

func newPackageCounter(name string) *packageCounter {
	base := path.Base(name)
	c := &packageCounter{matching: true}
	switch {
	case onePackagePerFile(name):
		c.perFile = true
	case isRPMDB(name):
		c.perBytes = rpmHeaderBytes
	case name == "var/lib/dpkg/status", name == "var/lib/dpkg/available", strings.HasPrefix(name, "var/lib/dpkg/status.d/"):
		c.marker = []byte("Package:")
	case name == "lib/apk/db/installed":
		c.marker = []byte("P:")
	case base == "Cargo.lock":
		c.marker = []byte("[[package]]")
	case base == "Manifest.toml":
		c.marker = []byte("[[deps.")
	}
	return c
}

func (c *packageCounter) Write(p []byte) (int, error) {
	c.size += int64(len(p))
	switch {
	case c.perBytes > 0, c.perFile:
	case c.marker == nil:
		c.count += int64(bytes.Count(p, []byte("{")) + bytes.Count(p, []byte("<")))
	default:
		c.countMarkers(p)
	}
	return len(p), nil
}

// countMarkers counts lines of p that start with the marker, across writes.
func (c *packageCounter) countMarkers(p []byte) {
	for len(p) > 0 {
		if c.matching {
			if p[0] == c.marker[c.matched] {
				c.matched++
				p = p[1:]
				if c.matched == len(c.marker) {
					c.count++
					c.matching = false
				}
				continue
			}
			c.matching = false // p[0] is looked at again below: it may end the line
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			return
		}
		p = p[i+1:]
		c.matching, c.matched = true, 0
	}
}

// packages returns the estimate.
func (c *packageCounter) packages() int64 {
	switch {
	case c.perFile:
		return 1
	case c.perBytes > 0:
		return max(1, c.size/c.perBytes)
	}
	return max(1, c.count)
}

var _ io.Writer = (*packageCounter)(nil)

// isSparse reports whether hdr is a sparse file, whose holes the tar reader fills with zeros
// that no byte of the stream pays for.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
