package policy

import (
	"fmt"
	"regexp"
	"strings"
)

// Glob matches image references: '*' matches any run of characters except '/', '**' matches any
// run including '/', everything else is literal. A glob must match the whole reference, so
// "registry.example.com/*" never matches "registry.example.com.evil.io/x".
type Glob struct {
	pattern   string // as written
	canonical string // spelt as ParseImage spells images
	re        *regexp.Regexp
	tagged    bool
}

// GlobForm says how simply a glob matches.
type GlobForm int

// The forms of a glob, for what matches it without its regular expression (internal/vap).
const (
	// GlobRegexp needs the regular expression.
	GlobRegexp GlobForm = iota
	// GlobExact has no wildcard: the subject equals the prefix.
	GlobExact
	// GlobPrefix ends with its only wildcard, "**": the subject starts with the prefix.
	GlobPrefix
	// GlobPrefixNoSlash ends with its only wildcard, "*": the subject starts with the prefix and
	// has no '/' after it.
	GlobPrefixNoSlash
)

// hasTag reports whether a glob has a tag part: a ':' after its last '/'.
func hasTag(pattern string) bool {
	return strings.Contains(pattern[strings.LastIndex(pattern, "/")+1:], ":")
}

// CompileGlob compiles pattern, its host spelt as ParseImage spells images' (see canonicalGlob),
// so that "docker.io/**" matches registry-1.docker.io/library/nginx and "registry.example.com/*"
// matches REGISTRY.EXAMPLE.COM:443/app.
func CompileGlob(pattern string) (Glob, error) {
	if pattern == "" {
		return Glob{}, fmt.Errorf("empty glob")
	}
	if strings.Trim(pattern, "*") == "" && pattern != "**" {
		return Glob{}, fmt.Errorf("glob %q matches no image: a '*' never crosses a '/'; write ** for every image", pattern)
	}
	original := pattern
	pattern = canonicalGlob(pattern)
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch {
		case strings.HasPrefix(pattern[i:], "**"):
			b.WriteString(".*")
			i++
		case pattern[i] == '*':
			b.WriteString("[^/]*")
		default:
			b.WriteString(regexp.QuoteMeta(pattern[i : i+1]))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return Glob{}, fmt.Errorf("glob %q: %w", original, err)
	}
	return Glob{pattern: original, canonical: pattern, re: re, tagged: hasTag(pattern)}, nil
}

// String returns the pattern.
func (g Glob) String() string { return g.pattern }

// Regexp returns the regular expression (RE2, anchored) the glob compiles to, which MatchImage
// matches against an image's repository, or repository:tag when Tagged.
func (g Glob) Regexp() string { return g.re.String() }

// Tagged reports whether the glob has a tag part, and so matches repository:tag.
func (g Glob) Tagged() bool { return g.tagged }

// Form returns how simply the glob matches, and the literal prefix (the whole canonical pattern,
// for GlobExact) that its form compares the subject (repository, or repository:tag when Tagged)
// with; GlobRegexp returns no prefix.
func (g Glob) Form() (GlobForm, string) {
	p := g.canonical
	switch n := strings.Count(p, "*"); {
	case n == 0:
		return GlobExact, p
	case n == 2 && strings.HasSuffix(p, "**"):
		return GlobPrefix, strings.TrimSuffix(p, "**")
	case n == 1 && strings.HasSuffix(p, "*"):
		return GlobPrefixNoSlash, strings.TrimSuffix(p, "*")
	}
	return GlobRegexp, ""
}

// MatchImage reports whether the glob matches img: its repository (host/path), or, for a glob
// with a tag part (a ':' after the last '/'), its repository:tag.
func (g Glob) MatchImage(img Image) bool {
	if g.tagged {
		return g.re.MatchString(img.Repository + ":" + img.Tag)
	}
	return g.re.MatchString(img.Repository)
}

// CompileGlobs compiles patterns, naming the first bad one.
func CompileGlobs(patterns []string) ([]Glob, error) {
	globs := make([]Glob, 0, len(patterns))
	for _, p := range patterns {
		g, err := CompileGlob(p)
		if err != nil {
			return nil, err
		}
		globs = append(globs, g)
	}
	return globs, nil
}

// AnyMatch reports whether one of globs matches img; no globs match everything.
func AnyMatch(globs []Glob, img Image) bool {
	if len(globs) == 0 {
		return true
	}
	for _, g := range globs {
		if g.MatchImage(img) {
			return true
		}
	}
	return false
}
