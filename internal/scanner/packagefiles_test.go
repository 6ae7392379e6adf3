package scanner

import (
	"archive/tar"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func TestPackageCounterCountsEntriesAcrossWrites(t *testing.T) {
	g := NewWithT(t)
	status := "Package: a\nStatus: install ok installed\n\nPackage: b\nDescription: no\n Package: not at line start\nPackage: c\n"
	for _, chunk := range []int{1, 3, 7, len(status)} {
		c := newPackageCounter("var/lib/dpkg/status")
		for i := 0; i < len(status); i += chunk {
			_, _ = c.Write([]byte(status[i:min(i+chunk, len(status))]))
		}
		g.Expect(c.packages()).To(BeEquivalentTo(3), "chunk %d", chunk)
	}
	c := newPackageCounter("app/Cargo.lock")
	_, _ = c.Write([]byte(strings.Repeat("[[package]]\nname = \"x\"\nversion = \"1\"\n", 5)))
	g.Expect(c.packages()).To(BeEquivalentTo(5))
	c = newPackageCounter("app/vendor/composer/installed.json")
	_, _ = c.Write([]byte(`{"packages":[{"name":"a"},{"name":"b"}]}`))
	g.Expect(c.packages()).To(BeEquivalentTo(3))
	c = newPackageCounter("app/node_modules/x/package.json")
	_, _ = c.Write([]byte(`{"name":"x","dependencies":{"a":"1"},"scripts":{}}`))
	g.Expect(c.packages()).To(BeEquivalentTo(1))
	c = newPackageCounter("var/lib/rpm/rpmdb.sqlite")
	_, _ = c.Write(make([]byte, 160<<10))
	g.Expect(c.packages()).To(BeEquivalentTo(10))
}

// TestTrivyWantsThePackageFiles asks the oracle about files Trivy parses into packages, the
// ones a hand-kept list missed included, and about files it does not read.
func TestTrivyWantsThePackageFiles(t *testing.T) {
	g := NewWithT(t)
	oracle, err := packageFileOracle()
	g.Expect(err).NotTo(HaveOccurred())
	file := func(name string, mode int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: 10}
	}
	for _, name := range []string{
		"var/lib/dpkg/status", "lib/apk/db/installed", "usr/lib/sysimage/rpm/rpmdb.sqlite",
		"app/Cargo.lock", "app/node_modules/x/package.json", "usr/lib/python3/site-packages/x-1.0.dist-info/METADATA",
		"app/vendor/composer/installed.json",
	} {
		g.Expect(oracle.wanted(name, file(name, 0o644))).To(BeTrue(), name)
	}
	for _, name := range []string{"etc/hostname", "usr/share/doc/x/README", "srv/model.bin"} {
		g.Expect(oracle.wanted(name, file(name, 0o644))).To(BeFalse(), name)
	}
	// Executables are for the binary analyzers, which are left out.
	g.Expect(oracle.wanted("usr/bin/app", file("usr/bin/app", 0o755))).To(BeFalse())
}
