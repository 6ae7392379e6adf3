// Command scanbench times `imageguard scan`, the command line, on the real-scale DB (the one the
// scanner's benchmarks use, built once and kept): a Debian image of 90 packages served by a
// registry on loopback, which also serves the DB as the OCI artifact Trivy downloads. It runs the
// binary as a user would, cold (empty cache) and then warm (the DB and the image's inventory kept),
// with --db-repository and with --db-path, and prints the wall-clock times; with --trivy, it times
// `trivy image` the same way on the same DB and image.
//
//	go build -o bin/imageguard ./cmd/imageguard && go run ./hack/scanbench --runs 5
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imageguard/imageguard/internal/testutil"
)

func main() {
	binary := flag.String("imageguard", "bin/imageguard", "the imageguard binary")
	trivy := flag.String("trivy", "", "a trivy binary to time the same way (optional)")
	runs := flag.Int("runs", 5, "warm runs of each")
	flag.Parse()
	if err := run(*binary, *trivy, *runs); err != nil {
		log.Fatalf("scanbench: %v", err)
	}
}

func run(binary, trivy string, runs int) error {
	started := time.Now()
	src, err := testutil.RealScaleDBDir(testutil.RealScale)
	if err != nil {
		return err
	}
	fmt.Printf("real-scale DB ready in %s (built once, then kept)\n", time.Since(started).Round(time.Millisecond))
	archive, err := testutil.DBArchive(src)
	if err != nil {
		return err
	}
	artifact, err := testutil.DBArtifact(archive)
	if err != nil {
		return err
	}
	var pkgs []testutil.DebPackage
	for i := range 90 {
		pkgs = append(pkgs, testutil.DebPackage{Name: testutil.RealScalePackageName(i * (testutil.RealScale.OSPackages / 90)), Version: testutil.RealScaleOSVersion})
	}
	img, err := testutil.DebianImage("12.11", pkgs)
	if err != nil {
		return err
	}

	var requests, blobs atomic.Int64
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	host := ln.Addr().String()
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if filepath.Base(filepath.Dir(r.URL.Path)) == "blobs" && r.Method == http.MethodGet {
			blobs.Add(1)
		}
		reg.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	for ref, image := range map[string]v1.Image{host + "/aquasecurity/trivy-db:2": artifact, host + "/bench/debian:90": img} {
		tag, err := name.NewTag(ref, name.Insecure)
		if err != nil {
			return err
		}
		if err := remote.Write(tag, image); err != nil {
			return fmt.Errorf("pushing %s: %w", ref, err)
		}
	}
	imageRef := host + "/bench/debian:90"

	tmp, err := os.MkdirTemp("", "scanbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	common := []string{"scan", imageRef, "-o", "json", "--insecure-registries", host}
	cases := []struct {
		name string
		cmd  func(cache string) *exec.Cmd
	}{
		{"imageguard scan --db-repository", func(cache string) *exec.Cmd {
			return exec.Command(binary, append(common, "--cache-dir", cache, "--db-repository", host+"/aquasecurity/trivy-db:2")...)
		}},
		{"imageguard scan --db-path", func(cache string) *exec.Cmd {
			return exec.Command(binary, append(common, "--cache-dir", cache, "--db-path", filepath.Join(src, "db"))...)
		}},
	}
	if trivy != "" {
		cases = append(cases, struct {
			name string
			cmd  func(cache string) *exec.Cmd
		}{"trivy image (--db-repository)", func(cache string) *exec.Cmd {
			cmd := exec.Command(trivy, "image", "--quiet", "--format", "json", "--scanners", "vuln", "--insecure",
				"--cache-dir", cache, "--db-repository", host+"/aquasecurity/trivy-db:2", imageRef)
			cmd.Env = append(os.Environ(), "TRIVY_NO_PROGRESS=true")
			return cmd
		}})
	}
	fmt.Printf("%-34s %10s %10s %10s %10s %14s\n", "", "cold", "warm min", "warm med", "warm max", "warm requests")
	for i, c := range cases {
		cache := filepath.Join(tmp, fmt.Sprint(i))
		cold, err := timed(c.cmd(cache))
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		var warm []time.Duration
		before := requests.Load()
		for range runs {
			d, err := timed(c.cmd(cache))
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			warm = append(warm, d)
		}
		slices.Sort(warm)
		fmt.Printf("%-34s %10s %10s %10s %10s %14.1f\n", c.name, ms(cold), ms(warm[0]), ms(warm[len(warm)/2]), ms(warm[len(warm)-1]),
			float64(requests.Load()-before)/float64(runs))
	}
	fmt.Printf("(registry on loopback; warm requests: registry requests per warm run; blob GETs in all: %d)\n", blobs.Load())
	return nil
}

func timed(cmd *exec.Cmd) (time.Duration, error) {
	out, err := os.CreateTemp("", "scanbench-out-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	started := time.Now()
	err = cmd.Run()
	d := time.Since(started)
	if err != nil {
		// Findings make both tools exit 0 here (no --exit-code); a failure is a failure.
		raw, _ := os.ReadFile(out.Name())
		return 0, fmt.Errorf("%v: %s", err, tail(raw))
	}
	return d, nil
}

func tail(b []byte) []byte {
	if len(b) > 2000 {
		return b[len(b)-2000:]
	}
	return b
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
