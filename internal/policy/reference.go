package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
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
//
// A reference must also follow ReferencePattern, the grammar both go-containerregistry and the
// container runtimes (Docker's reference grammar, which containerd and CRI-O use) accept, with its
// lengths (a name of at most 255 characters, a path of at least 2) and, for an IPv6 host, an
// address the Kubernetes CEL ip() function takes: what neither can pull is refused as malformed,
// so that the ValidatingAdmissionPolicies ImageGuard generates (internal/vap) read every
// reference exactly as this function does.
func ParseImage(ref string) (Image, error) {
	if err := checkGrammar(ref); err != nil {
		return Image{}, fmt.Errorf("malformed image reference %q: %w", shown(ref), err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("malformed image reference %q: %w", shown(ref), err)
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

// The reference grammar: Docker's (github.com/distribution/reference), narrowed to what
// go-containerregistry also reads the same way. A first path element is a host when it has a '.'
// or a ':' or is localhost (go-containerregistry's rule; Docker's also takes an upper-case one,
// which go-containerregistry refuses); a port has at most 5 digits; the only digest is sha256,
// in lower case.
const (
	domainComponent = `[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?`
	port            = `:[0-9]{1,5}`
	host            = `(?:` + domainComponent + `(?:\.` + domainComponent + `)+(?:` + port + `)?` +
		`|` + domainComponent + port + `|localhost|\[[a-fA-F0-9:]+\](?:` + port + `)?)`
	namePattern = `(?:` + host + `/` + PathComponentPattern + `(?:/` + PathComponentPattern + `)*` +
		`|` + PathComponentNoDotPattern + `(?:/` + PathComponentPattern + `)+|` + PathComponentPattern + `)`
)

// Parts of the grammar, for what must read references as it does (internal/vap).
const (
	PathComponentPattern      = `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`
	PathComponentNoDotPattern = `[a-z0-9]+(?:(?:_|__|-+)[a-z0-9]+)*`
	TagPattern                = `[\w][\w.-]{0,127}`
	DigestPattern             = `sha256:[a-f0-9]{64}`
)

// ReferencePattern is the grammar of an image reference: name, optional :tag, optional @digest.
const ReferencePattern = `^` + namePattern + `(?::` + TagPattern + `)?(?:@` + DigestPattern + `)?$`

// MaxReferenceLength bounds a reference: the longest name, tag and digest with their separators.
const MaxReferenceLength = 512

// MaxNameLength is the longest name (host and path, as written), as Docker's grammar bounds it.
const MaxNameLength = 255

var referenceRegexp = regexp.MustCompile(ReferencePattern)

// checkGrammar says how ref breaks the grammar, or nil.
func checkGrammar(ref string) error {
	if len(ref) > MaxReferenceLength || !referenceRegexp.MatchString(ref) {
		return errors.New("not of the grammar container runtimes pull (host[:port]/path[:tag][@sha256:digest], the path in lower case)")
	}
	n, _, _ := strings.Cut(ref, "@")
	if i := strings.LastIndex(n, ":"); i > strings.LastIndex(n, "/") {
		n = n[:i]
	}
	if len(n) > MaxNameLength {
		return fmt.Errorf("the name is longer than %d characters", MaxNameLength)
	}
	first, _, hasPath := strings.Cut(n, "/")
	if hasPath && strings.HasPrefix(first, "[") {
		addr, err := netip.ParseAddr(first[1:strings.Index(first, "]")])
		if err != nil || !addr.Is6() || addr.Is4In6() {
			return errors.New("the host is not an IPv6 address (IPv4-mapped ones are refused)")
		}
	}
	return nil
}

// shown is ref as an error names it: cut after 128 bytes, so that a hostile reference does not
// make every message about it as long as itself.
func shown(ref string) string {
	if len(ref) <= 128 {
		return ref
	}
	return strings.ToValidUTF8(ref[:128], "") + "..."
}
