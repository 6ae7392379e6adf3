package testutil

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// GoBinaryPath is where GoBinaryImage puts the binary inside the image.
const GoBinaryPath = "usr/local/bin/app"

// DefaultGoModules is the documented example for GoBinaryImage. golang.org/x/text v0.3.7 is
// affected by a real advisory (CVE-2022-32149, fixed in v0.3.8), so a fixture DB can mirror a
// finding users know, and its root package is importable and tiny.
var DefaultGoModules = map[string]string{"golang.org/x/text": "v0.3.7"}

var goBinaries = struct {
	sync.Mutex
	byModules map[string][]byte
}{byModules: map[string][]byte{}}

// GoBinaryImage builds a single-layer linux/amd64 image with a real Go binary at GoBinaryPath
// (mode 0755, which Trivy's gobinary analyzer requires) whose embedded build info lists the given
// dependencies. Keys are import paths of packages the program imports: a module root such as
// "golang.org/x/text", or a package inside a module such as "golang.org/x/net/html"; values are
// the module versions. Trivy reads the modules from the build info (`go version -m` shows them).
//
// The program is built with the go command on PATH (CGO_ENABLED=0, GOFLAGS=-mod=mod, GOWORK=off,
// GOEXPERIMENT unset, GOTOOLCHAIN=local), fetching modules through the configured GOPROXY on the
// first run. Each module set is built once per test process; the test fails if the build info
// does not report every requested version.
func GoBinaryImage(t testing.TB, modules map[string]string) v1.Image {
	t.Helper()
	bin := goBinary(t, modules)
	layer, err := layerFromEntries(map[string]fileEntry{GoBinaryPath: {data: bin, mode: 0o755}})
	if err != nil {
		t.Fatalf("go binary layer: %v", err)
	}
	img, err := ImageFromLayers(LinuxAMD64, layer)
	if err != nil {
		t.Fatalf("go binary image: %v", err)
	}
	return img
}

func goBinary(t testing.TB, modules map[string]string) []byte {
	t.Helper()
	if len(modules) == 0 {
		t.Fatalf("GoBinaryImage: no modules given")
	}
	pkgs := make([]string, 0, len(modules))
	for p := range modules {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	key := make([]string, 0, len(pkgs))
	for _, p := range pkgs {
		key = append(key, p+"@"+modules[p])
	}
	cacheKey := strings.Join(key, " ")

	// Held across the build so concurrent tests asking for the same set build it once.
	goBinaries.Lock()
	defer goBinaries.Unlock()
	if bin, ok := goBinaries.byModules[cacheKey]; ok {
		return bin
	}

	dir, err := os.MkdirTemp("", "testutil-gobinary-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	defer os.RemoveAll(dir)

	var src strings.Builder
	src.WriteString("// Command app exists so that its build info records modules for scanners.\npackage main\n\nimport (\n")
	for _, p := range pkgs {
		fmt.Fprintf(&src, "\t_ %q\n", p)
	}
	src.WriteString(")\n\nfunc main() {}\n")
	writeFile(t, filepath.Join(dir, "go.mod"), "module example.invalid/app\n\ngo 1.22\n")
	writeFile(t, filepath.Join(dir, "main.go"), src.String())

	getArgs := append([]string{"get"}, key...)
	runGo(t, dir, getArgs...)
	runGo(t, dir, "mod", "tidy")
	out := filepath.Join(dir, "app")
	runGo(t, dir, "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")

	info, err := buildinfo.ReadFile(out)
	if err != nil {
		t.Fatalf("read build info: %v", err)
	}
	for _, p := range pkgs {
		if !hasModule(info, p, modules[p]) {
			t.Fatalf("go binary: build info lacks %s %s (MVS may have raised it); deps: %v", p, modules[p], info.Deps)
		}
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("read binary: %v", err)
	}
	goBinaries.byModules[cacheKey] = bin
	return bin
}

// hasModule reports whether the module providing package pkg is listed at version.
func hasModule(info *buildinfo.BuildInfo, pkg, version string) bool {
	for _, d := range info.Deps {
		if (pkg == d.Path || strings.HasPrefix(pkg, d.Path+"/")) && d.Version == version {
			return true
		}
	}
	return false
}

func runGo(t testing.TB, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = childGoEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}

// childGoEnv isolates the fixture build from the test's own settings: the repository's
// GOEXPERIMENT=jsonv2, a go.work, or -mod=vendor must not leak into a throwaway module.
func childGoEnv() []string {
	drop := map[string]bool{
		"GOEXPERIMENT": true, "GOFLAGS": true, "GOWORK": true, "CGO_ENABLED": true,
		"GOOS": true, "GOARCH": true, "GOTOOLCHAIN": true,
	}
	env := make([]string, 0, len(os.Environ())+6)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !drop[k] {
			env = append(env, kv)
		}
	}
	return append(env,
		"GOEXPERIMENT=", "GOFLAGS=-mod=mod -buildvcs=false", "GOWORK=off", "CGO_ENABLED=0",
		"GOOS=linux", "GOARCH=amd64", "GOTOOLCHAIN=local",
	)
}

func writeFile(t testing.TB, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatalf("write %s: %v", p, err)
	}
}
