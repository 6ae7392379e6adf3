package registryscan

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/imageguard/imageguard/internal/imageref"
)

// Entry is one spec.repositories entry of a scan: a repository (registry.example.com/team/app),
// or a prefix ending in /** that stands for every repository under it
// (registry.example.com/team/**) or in the whole registry (registry.example.com/**).
type Entry struct {
	// Host is the registry host, as written.
	Host string
	// Path is the repository path, as written; "" for a whole registry.
	Path string
	// Prefix says whether the entry stands for every repository under Path.
	Prefix bool
}

// ParseEntry parses and checks an entry: it must name its registry host, and a repository unless
// it is a prefix.
func ParseEntry(entry string) (Entry, error) {
	path, prefix := strings.CutSuffix(entry, "/**")
	host, rest, _ := strings.Cut(path, "/")
	if !strings.ContainsAny(host, ".:") && host != "localhost" || (rest == "" && !prefix) {
		return Entry{}, fmt.Errorf("%q names no registry host and repository (registry.example.com/team/app, registry.example.com/team/**)", entry)
	}
	e := Entry{Host: host, Path: rest, Prefix: prefix}
	if _, err := name.NewRepository(e.someRepository(), name.StrictValidation); err != nil {
		return Entry{}, fmt.Errorf("%q: %w", entry, err)
	}
	return e, nil
}

// someRepository is a repository of the entry's registry: the entry's own, or for a whole
// registry one of it (to parse the host the way go-containerregistry does).
func (e Entry) someRepository() string {
	if e.Path == "" {
		return e.Host + "/all"
	}
	return e.Host + "/" + e.Path
}

// Covers reports whether repository, in the canonical spelling Repositories lists (and the pod
// controller gives images), is the entry's repository or under its prefix.
func (e Entry) Covers(repository string) bool {
	if e.Path == "" {
		return strings.HasPrefix(repository, imageref.CanonicalHost(e.Host)+"/")
	}
	canonical := imageref.CanonicalRepository(e.Host, e.Path)
	if e.Prefix {
		return strings.HasPrefix(repository, canonical+"/")
	}
	return repository == canonical
}

// CoversPath is Covers for a repository path whose host is not known: a registry's notification
// names the repository's path, and a registry often knows itself by another host name than the
// one clients use.
func (e Entry) CoversPath(path string) bool {
	switch {
	case e.Path == "":
		return true
	case e.Prefix:
		return strings.HasPrefix(path, e.Path+"/")
	}
	return path == e.Path
}
