package testutil

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	. "github.com/onsi/gomega"
)

func smallImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := AlpineImage("3.22.1", []APKPackage{{Name: "musl", Version: "1.2.5-r10"}})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestRegistryCountsRequests(t *testing.T) {
	g := NewWithT(t)
	reg := NewRegistry(t)
	img := smallImage(t)

	ref, digest := reg.Push(t, "team/app", "v1", img)
	g.Expect(ref).To(Equal(reg.Host() + "/team/app:v1"))
	g.Expect(reg.Host()).To(HavePrefix("127.0.0.1:"))
	g.Expect(reg.Counts()).To(Equal(Counts{}), "setup pushes are not counted")

	r, err := name.ParseReference(ref)
	g.Expect(err).NotTo(HaveOccurred())
	desc, err := remote.Head(r)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(desc.Digest).To(Equal(digest))

	pulled, err := remote.Image(r)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = pulled.ConfigFile()
	g.Expect(err).NotTo(HaveOccurred())
	layers, err := pulled.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	for _, l := range layers {
		rc, err := l.Compressed()
		g.Expect(err).NotTo(HaveOccurred())
		_, err = io.Copy(io.Discard, rc)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(rc.Close()).To(Succeed())
	}

	c := reg.Counts()
	g.Expect(c.ManifestHEADs).To(Equal(1))
	g.Expect(c.ManifestGETs).To(Equal(1))
	g.Expect(c.BlobGETs).To(Equal(len(layers)+1), "each layer and the config")
	var size int64
	for _, l := range layers {
		n, err := l.Size()
		g.Expect(err).NotTo(HaveOccurred())
		size += n
	}
	manifest, err := pulled.Manifest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.BlobBytes).To(Equal(size+manifest.Config.Size), "the bytes of the layers and the config")
	g.Expect(c.BlobHEADs).To(BeZero())
	// Each client call pings /v2/ first; the ping is counted only in Requests.
	g.Expect(c.Requests).To(BeNumerically(">=", c.ManifestHEADs+c.ManifestGETs+c.BlobGETs))

	reg.ResetCounts()
	g.Expect(reg.Counts()).To(Equal(Counts{}))
}

func TestClassify(t *testing.T) {
	for path, want := range map[string]string{
		"/v2/":                               "",
		"/v2/a/b/c/manifests/latest":         "manifests",
		"/v2/app/manifests/sha256:abc":       "manifests",
		"/v2/team/app/blobs/sha256:abc":      "blobs",
		"/v2/team/app/blobs/uploads/":        "",
		"/v2/team/app/blobs/uploads/1234":    "",
		"/v2/team/app/tags/list":             "",
		"/v2/manifests/blobs/sha256:abc":     "blobs",
		"/v2/team/blobs/manifests/sha256:ab": "manifests",
	} {
		t.Run(path, func(t *testing.T) {
			NewWithT(t).Expect(classify(path)).To(Equal(want))
		})
	}
}

func TestRegistryBasicAuth(t *testing.T) {
	g := NewWithT(t)
	reg := NewRegistry(t, WithBasicAuth("alice", "s3cret"))
	ref, digest := reg.Push(t, "private/app", "v1", smallImage(t))
	r, err := name.ParseReference(ref)
	g.Expect(err).NotTo(HaveOccurred())

	_, err = remote.Head(r)
	var terr *transport.Error
	g.Expect(errors.As(err, &terr)).To(BeTrue(), "anonymous: %v", err)
	g.Expect(terr.StatusCode).To(Equal(http.StatusUnauthorized))

	_, err = remote.Head(r, remote.WithAuth(&authn.Basic{Username: "alice", Password: "wrong"}))
	g.Expect(errors.As(err, &terr)).To(BeTrue(), "wrong password: %v", err)
	g.Expect(terr.StatusCode).To(Equal(http.StatusUnauthorized))

	img, err := remote.Image(r, remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"}))
	g.Expect(err).NotTo(HaveOccurred())
	got, err := img.Digest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal(digest))
	_, err = img.ConfigFile()
	g.Expect(err).NotTo(HaveOccurred(), "blob reads carry the credentials too")
}

func TestRegistryFaults(t *testing.T) {
	g := NewWithT(t)
	reg := NewRegistry(t)
	ref, _ := reg.Push(t, "app", "v1", smallImage(t))
	r, err := name.ParseReference(ref)
	g.Expect(err).NotTo(HaveOccurred())

	reg.SetFault(StatusFault(http.StatusServiceUnavailable))
	// Setup traffic bypasses the fault, so content can change while the registry is "down".
	reg.Push(t, "app", "v2", smallImage(t))
	_, err = remote.Head(r, remote.WithRetryBackoff(remote.Backoff{Steps: 1}))
	var terr *transport.Error
	g.Expect(errors.As(err, &terr)).To(BeTrue(), "%v", err)
	g.Expect(terr.StatusCode).To(Equal(http.StatusServiceUnavailable))
	g.Expect(reg.Counts().Requests).To(BeNumerically(">", 0), "faulted requests are counted")

	reg.SetFault(reg.HangFault())
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = remote.Head(r, remote.WithContext(ctx), remote.WithRetryBackoff(remote.Backoff{Steps: 1}))
	g.Expect(err).To(HaveOccurred())
	g.Expect(time.Since(start)).To(BeNumerically("<", 10*time.Second))

	reg.SetFault(nil)
	_, err = remote.Head(r)
	g.Expect(err).NotTo(HaveOccurred())
}

func TestRegistryHandlerWrapper(t *testing.T) {
	g := NewWithT(t)
	failBlobs := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if strings.Contains(req.URL.Path, "/blobs/sha256:") && req.Method == http.MethodGet {
				http.Error(w, "boom", http.StatusInternalServerError)
				return
			}
			next.ServeHTTP(w, req)
		})
	}
	reg := NewRegistry(t, WithHandlerWrapper(failBlobs))
	ref, _ := reg.Push(t, "app", "v1", smallImage(t))
	r, err := name.ParseReference(ref)
	g.Expect(err).NotTo(HaveOccurred())

	img, err := remote.Image(r, remote.WithRetryBackoff(remote.Backoff{Steps: 1}))
	g.Expect(err).NotTo(HaveOccurred(), "manifests pass the wrapper")
	_, err = img.ConfigFile()
	g.Expect(err).To(MatchError(ContainSubstring("500")))
}

func TestPushIndex(t *testing.T) {
	g := NewWithT(t)
	reg := NewRegistry(t)
	layer, err := LayerFromFiles(map[string][]byte{"etc/hostname": []byte("x\n")})
	g.Expect(err).NotTo(HaveOccurred())
	amd, err := ImageFromLayers(LinuxAMD64, layer)
	g.Expect(err).NotTo(HaveOccurred())
	arm, err := ImageFromLayers(v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, layer)
	g.Expect(err).NotTo(HaveOccurred())
	idx, err := IndexFromImages(amd, arm)
	g.Expect(err).NotTo(HaveOccurred())

	ref, digest := reg.PushIndex(t, "multi", "v1", idx)
	r, err := name.ParseReference(ref)
	g.Expect(err).NotTo(HaveOccurred())
	got, err := remote.Index(r)
	g.Expect(err).NotTo(HaveOccurred())
	m, err := got.IndexManifest()
	g.Expect(err).NotTo(HaveOccurred())
	gotDigest, err := got.Digest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(gotDigest).To(Equal(digest))
	g.Expect(m.Manifests).To(HaveLen(2))
	g.Expect(m.Manifests[1].Platform.Architecture).To(Equal("arm64"))

	armImg, err := remote.Image(r, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}))
	g.Expect(err).NotTo(HaveOccurred())
	cfg, err := armImg.ConfigFile()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.Architecture).To(Equal("arm64"))
}
