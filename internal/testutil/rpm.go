package testutil

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// RPMPackage is a package installed in an RPM database: a binary package of a source package.
type RPMPackage struct {
	Name    string
	Epoch   int
	Version string
	Release string
	// Arch is x86_64 when empty.
	Arch string
	// Source is the source package's name, Name when empty: packages of one Source (and
	// version) are subpackages of one spec, as the distributions build them.
	Source string
	// License is "MIT" when empty.
	License string
	// Vendor is the distribution's (RockyImage: Rocky Enterprise Software Foundation) when
	// empty; Trivy takes a package of another vendor for a third party's.
	Vendor string
}

// rpmTools are Debian's packages whose rpm, rpmdb and rpmbuild make RPM databases; the rest of
// what they link is on every Debian machine.
var rpmTools = []string{"rpm", "rpm-common", "librpm9", "librpmio9", "librpmbuild9", "librpmsign9", "liblua5.3-0", "libpopt0", "debugedit"}

var rpmToolsOnce = sync.OnceValues(installRPMTools)

// installRPMTools unpacks rpmTools into the user's cache folder, once, and returns that root.
func installRPMTools() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	root := filepath.Join(base, "imageguard", "debian", DebianSuite, "rpm-tools")
	if _, err := os.Stat(filepath.Join(root, ".complete")); err == nil {
		return root, nil
	}
	tmp := root + fmt.Sprintf(".tmp-%d", os.Getpid())
	_ = os.RemoveAll(tmp)
	for _, name := range rpmTools {
		pkg, err := DebianFiles(context.Background(), name)
		if err != nil {
			return "", err
		}
		for p, data := range pkg.Files {
			dst := filepath.Join(tmp, p)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return "", err
			}
			if err := os.WriteFile(dst, data, os.FileMode(pkg.Modes[p]|0o600)); err != nil {
				return "", err
			}
		}
		for p, target := range pkg.Links {
			dst := filepath.Join(tmp, p)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return "", err
			}
			_ = os.Remove(dst)
			if err := os.Symlink(target, dst); err != nil {
				return "", err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", err
	}
	_ = os.RemoveAll(root)
	if err := os.Rename(tmp, root); err != nil {
		// Another process installed it meanwhile.
		if _, serr := os.Stat(filepath.Join(root, ".complete")); serr == nil {
			_ = os.RemoveAll(tmp)
			return root, nil
		}
		return "", err
	}
	return root, nil
}

// RPMDatabase returns an RPM database (rpmdb.sqlite, as RHEL 9 and its rebuilds keep it) with
// pkgs installed: each source's spec file is written here and built with Debian's rpmbuild, and
// the packages installed into a new database with Debian's rpm (--justdb).
func RPMDatabase(pkgs []RPMPackage) ([]byte, error) {
	root, err := rpmToolsOnce()
	if err != nil {
		return nil, fmt.Errorf("the rpm tools: %w", err)
	}
	work, err := os.MkdirTemp("", "rpmdb-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	type source struct {
		name, version, release string
		epoch                  int
		pkgs                   []RPMPackage
	}
	sources := map[string]*source{}
	for _, p := range pkgs {
		if p.Name == "" || p.Version == "" || p.Release == "" {
			return nil, fmt.Errorf("rpm package %+v: name, version and release are required", p)
		}
		src := or(p.Source, p.Name)
		key := fmt.Sprintf("%s %d:%s-%s %s %s", src, p.Epoch, p.Version, p.Release, or(p.Arch, "x86_64"), p.Vendor)
		if sources[key] == nil {
			sources[key] = &source{name: src, version: p.Version, release: p.Release, epoch: p.Epoch}
		}
		sources[key].pkgs = append(sources[key].pkgs, p)
	}
	keys := make([]string, 0, len(sources))
	for k := range sources {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rpmrc := filepath.Join(root, "usr/lib/rpm/rpmrc")
	macros := filepath.Join(root, "usr/lib/rpm/macros")
	run := func(tool string, args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		args = append([]string{"--rcfile", rpmrc, "--macros", macros, "--define", "_rpmconfigdir " + filepath.Join(root, "usr/lib/rpm")}, args...)
		cmd := exec.CommandContext(ctx, filepath.Join(root, "usr/bin", tool), args...)
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(root, "usr/lib/x86_64-linux-gnu"), "HOME="+work)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args[6:], " "), err, bounded(out.String(), 2000))
		}
		return nil
	}
	top := filepath.Join(work, "top")
	for i, k := range keys {
		src := sources[k]
		var spec strings.Builder
		fmt.Fprintf(&spec, "Name: %s\nVersion: %s\nRelease: %s\n", src.name, src.version, src.release)
		if src.epoch != 0 {
			fmt.Fprintf(&spec, "Epoch: %d\n", src.epoch)
		}
		if v := src.pkgs[0].Vendor; v != "" {
			fmt.Fprintf(&spec, "Vendor: %s\n", v)
		}
		fmt.Fprintf(&spec, "Summary: %s\nLicense: %s\n%%description\n%s, built for a test.\n", src.name, or(src.pkgs[0].License, "MIT"), src.name)
		for _, p := range src.pkgs {
			if p.Name == src.name {
				spec.WriteString("%files\n")
				continue
			}
			fmt.Fprintf(&spec, "\n%%package -n %s\nSummary: %s\nLicense: %s\n%%description -n %s\n%s.\n%%files -n %s\n",
				p.Name, p.Name, or(p.License, "MIT"), p.Name, p.Name, p.Name)
		}
		specPath := filepath.Join(work, "spec-"+strconv.Itoa(i)+".spec")
		if err := os.WriteFile(specPath, []byte(spec.String()), 0o644); err != nil {
			return nil, err
		}
		arch := or(src.pkgs[0].Arch, "x86_64")
		if err := run("rpmbuild", "--define", "_topdir "+top, "--define", "_build_id_links none", "--target", arch, "-bb", specPath); err != nil {
			return nil, err
		}
	}
	rpms, err := filepath.Glob(filepath.Join(top, "RPMS", "*", "*.rpm"))
	if err != nil || len(rpms) == 0 {
		return nil, fmt.Errorf("rpmbuild made no package (%v)", err)
	}
	dbPath := filepath.Join(work, "db")
	if err := run("rpmdb", "--dbpath", dbPath, "--initdb"); err != nil {
		return nil, err
	}
	args := append([]string{"--dbpath", dbPath, "-i", "--justdb", "--nodeps", "--noscripts", "--ignorearch", "--ignoreos"}, rpms...)
	if err := run("rpm", args...); err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(dbPath, "rpmdb.sqlite"))
}

func bounded(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// RockyImage builds a Rocky Linux image of release version (9.3) with pkgs in its RPM database
// (RPMDatabase), as rockylinux:9 keeps it.
func RockyImage(version string, pkgs []RPMPackage) (v1.Image, error) {
	pkgs = slices.Clone(pkgs)
	for i := range pkgs {
		pkgs[i].Vendor = or(pkgs[i].Vendor, "Rocky Enterprise Software Foundation")
	}
	rpmdb, err := RPMDatabase(pkgs)
	if err != nil {
		return nil, err
	}
	major, _, _ := strings.Cut(version, ".")
	layer, err := LayerFromFiles(map[string][]byte{
		"etc/os-release": fmt.Appendf(nil, "NAME=\"Rocky Linux\"\nVERSION=\"%s (Blue Onyx)\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"%s\"\nPLATFORM_ID=\"platform:el%s\"\nPRETTY_NAME=\"Rocky Linux %s (Blue Onyx)\"\n",
			version, version, major, version),
		"etc/rocky-release":        fmt.Appendf(nil, "Rocky Linux release %s (Blue Onyx)\n", version),
		"etc/redhat-release":       fmt.Appendf(nil, "Rocky Linux release %s (Blue Onyx)\n", version),
		"var/lib/rpm/rpmdb.sqlite": rpmdb,
	})
	if err != nil {
		return nil, err
	}
	return ImageFromLayers(LinuxAMD64, layer)
}
