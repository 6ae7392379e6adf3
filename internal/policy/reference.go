package policy

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/imageguard/imageguard/internal/imageref"
)

// ParseImage parses an image reference as a pod spec names it, into its canonical form: every
// spelling of one image is one Repository ("nginx", "docker.io/nginx",
// "registry-1.docker.io/library/nginx" are docker.io/library/nginx, with tag latest;
// "REGISTRY.example.com:443/app" is registry.example.com/app), so that policies, exceptions, report
// names and report specs see one image whatever the spelling. A tag beside a digest
// (registry/app:1.2@sha256:...) is dropped: the runtime pulls the digest and ignores the tag, so a
// tag there says nothing a policy may trust.
func ParseImage(ref string) (Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("malformed image reference %q: %w", ref, err)
	}
	img := Image{Repository: imageref.CanonicalRepository(r.Context().RegistryStr(), r.Context().RepositoryStr())}
	switch r := r.(type) {
	case name.Tag:
		img.Tag = r.TagStr()
	case name.Digest:
		img.Digest = r.DigestStr()
	}
	return img, nil
}

// canonicalGlob spells a glob as ParseImage spells images: a first path element that is not a
// host (no '.' or ':', not localhost) is a Docker Hub name, as the runtime reads it ("bitnami/*" is
// docker.io/bitnami/*, "nginx" is docker.io/library/nginx); a host is lower case and, without
// wildcards, spelt canonically (its port as a number, no :443, Docker Hub's one name); a Docker
// Hub glob of one path element names official images, under library/ (unless it crosses '/').
func canonicalGlob(pattern string) string {
	if pattern == "**" {
		return pattern
	}
	first, rest, hasRest := strings.Cut(pattern, "/")
	if !hasRest || !isHost(first) {
		// One element ("nginx", "nginx:1.*") or a path without host ("bitnami/*"): Docker Hub.
		first, rest = imageref.DockerHub, pattern
	}
	host := strings.ToLower(first)
	switch {
	case strings.Contains(host, "*"):
		return host + "/" + rest
	case strings.Contains(rest, "**"):
		// It crosses '/': library/ is one of the paths it already matches.
		return imageref.CanonicalHost(host) + "/" + rest
	}
	return imageref.CanonicalRepository(host, rest)
}

// isHost reports whether a reference's first path element names a registry, as go-containerregistry
// and the runtime decide: it has a '.' or a ':', or is localhost.
func isHost(element string) bool {
	return strings.ContainsAny(element, ".:") || element == "localhost"
}
