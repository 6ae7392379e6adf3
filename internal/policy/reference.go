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
// names and report specs see one image whatever the spelling. registry/app:1.2@sha256:... keeps
// its tag.
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
		left := ref[:strings.LastIndex(ref, "@")]
		if strings.LastIndex(left, ":") > strings.LastIndex(left, "/") {
			if t, err := name.NewTag(left); err == nil {
				img.Tag = t.TagStr()
			}
		}
	}
	return img, nil
}

// canonicalGlob spells a glob's host as images are spelt (see ParseImage): lower case, and, for a
// host without wildcards, without the default port and with Docker Hub's one name; a Docker Hub
// glob of one path element ("docker.io/nginx", "docker.io/*") names official images, under
// library/.
func canonicalGlob(pattern string) string {
	host, path, hasPath := strings.Cut(pattern, "/")
	host = strings.ToLower(host)
	switch {
	case !hasPath:
		return pattern
	case strings.Contains(host, "*"):
		return host + "/" + path
	case strings.Contains(path, "**"):
		// It crosses '/': library/ is one of the paths it already matches.
		return imageref.CanonicalHost(host) + "/" + path
	}
	return imageref.CanonicalRepository(host, path)
}
