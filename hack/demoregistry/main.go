// Command demoregistry is the local OCI registry of `make demo`: it serves images and the Trivy DB
// artifact on loopback, seeds sample images, and publishes vulnerability DBs built from YAML.
//
//	demoregistry serve --addr 127.0.0.1:5001
//	demoregistry seed --registry 127.0.0.1:5001
//	demoregistry publish-db --registry 127.0.0.1:5001 --advisories config/demo/advisories-v1.yaml
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imageguard/imageguard/internal/testutil"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: demoregistry serve|seed|publish-db [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:5001", "serve: address to listen on")
	host := fs.String("registry", "127.0.0.1:5001", "seed, publish-db: the registry")
	advisories := fs.String("advisories", "config/demo/advisories-v1.yaml", "publish-db: YAML of advisories")
	_ = fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(*addr)
	case "seed":
		err = seed(*host)
	case "publish-db":
		err = publishDB(*host, *advisories)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		log.Fatalf("demoregistry: %v", err)
	}
}

// serve runs the registry; GET /blob-reads tells how many blobs were read, so the demo can show
// that a DB update pulls no image.
func serve(addr string) error {
	var blobReads atomic.Int64
	reg := registry.New(registry.Logger(log.New(os.Stderr, "", 0)))
	mux := http.NewServeMux()
	mux.HandleFunc("/blob-reads", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, blobReads.Load())
	})
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && filepath.Base(filepath.Dir(r.URL.Path)) == "blobs" {
			blobReads.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("demoregistry: serving on %s", addr)
	return srv.ListenAndServe()
}

func push(host, repo, tag string, img v1.Image) error {
	ref, err := name.NewTag(host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img); err != nil {
		return fmt.Errorf("pushing %s: %w", ref, err)
	}
	d, _ := img.Digest()
	fmt.Printf("pushed %s@%s\n", ref, d)
	return nil
}

// seed pushes the sample images: an Alpine web server, a Debian API and a Node.js front end.
func seed(host string) error {
	web, err := testutil.AlpineImage("3.22.1", []testutil.APKPackage{
		{Name: "busybox", Version: "1.37.0-r18"}, {Name: "libcrypto3", Version: "3.5.1-r0", Origin: "openssl"},
		{Name: "libssl3", Version: "3.5.1-r0", Origin: "openssl"}, {Name: "zlib", Version: "1.3.1-r2"},
		{Name: "musl", Version: "1.2.5-r10"},
	})
	if err != nil {
		return err
	}
	api, err := testutil.DebianImage("12.11", []testutil.DebPackage{
		{Name: "libssl3", Version: "3.0.15-1~deb12u1", Source: "openssl"},
		{Name: "openssl", Version: "3.0.15-1~deb12u1"},
		{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"},
		{Name: "libc6", Version: "2.36-9+deb12u10", Source: "glibc"},
	})
	if err != nil {
		return err
	}
	webLayers, err := web.Layers()
	if err != nil {
		return err
	}
	frontend, err := testutil.NPMImage(webLayers, []testutil.NPMPackage{
		{Name: "lodash", Version: "4.17.20"}, {Name: "express", Version: "4.21.2"}, {Name: "minimist", Version: "1.2.5"},
	})
	if err != nil {
		return err
	}
	for _, img := range []struct {
		repo string
		img  v1.Image
	}{{"demo/web", web}, {"demo/api", api}, {"demo/frontend", frontend}} {
		if err := push(host, img.repo, "1.0", img.img); err != nil {
			return err
		}
	}
	return nil
}

// publishDB builds a Trivy DB from YAML and pushes it as the DB artifact Trivy downloads.
func publishDB(host, advisories string) error {
	raw, err := os.ReadFile(advisories)
	if err != nil {
		return err
	}
	spec, err := testutil.ParseAdvisories(raw)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "demo-db-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := testutil.BuildDB(dir, spec); err != nil {
		return err
	}
	archive, err := testutil.DBArchive(filepath.Join(dir, "db"))
	if err != nil {
		return err
	}
	artifact, err := testutil.DBArtifact(archive)
	if err != nil {
		return err
	}
	return push(host, "aquasecurity/trivy-db", "2", artifact)
}
