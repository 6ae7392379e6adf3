// Package registryscan lists what a registry holds for ImageGuard's registry scans: the
// repositories a scan names (exactly, or by a prefix read from the registry's catalog), their
// tags, page by page within bounds, and the tags a scan's filter selects.
package registryscan

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
)

// TagFilter says which tags of a repository count.
type TagFilter struct {
	// Semver is a semantic-version range ("^1.2", ">= 1.0, < 2"); a tag that is no version fails
	// it. Pre-releases pass only a range that names one, as Masterminds/semver has it (the
	// library Flux's image policies use).
	Semver string
	// Pattern is a regular expression (RE2) the whole tag must match.
	Pattern string
	// Latest keeps the newest N of the tags the rest selects: by version when every one is a
	// semantic version, else by the image's creation time. 0 keeps them all.
	Latest int
	// Exclude are regular expressions (RE2): a tag any of them matches whole is left out.
	Exclude []string
}

// Selector is a compiled TagFilter.
type Selector struct {
	semver  *semver.Constraints
	pattern *regexp.Regexp
	exclude []*regexp.Regexp
	latest  int
}

// Compile checks f and compiles it.
func Compile(f TagFilter) (*Selector, error) {
	s := &Selector{latest: f.Latest}
	if f.Latest < 0 {
		return nil, fmt.Errorf("latest: %d is not a count", f.Latest)
	}
	if f.Semver != "" {
		c, err := semver.NewConstraint(f.Semver)
		if err != nil {
			return nil, fmt.Errorf("semver: %q is not a range: %w", f.Semver, err)
		}
		s.semver = c
	}
	var err error
	if f.Pattern != "" {
		if s.pattern, err = wholeMatch(f.Pattern); err != nil {
			return nil, fmt.Errorf("pattern: %w", err)
		}
	}
	for i, e := range f.Exclude {
		re, err := wholeMatch(e)
		if err != nil {
			return nil, fmt.Errorf("exclude[%d]: %w", i, err)
		}
		s.exclude = append(s.exclude, re)
	}
	return s, nil
}

// wholeMatch compiles expr to match whole values only. It must compile on its own first, so that
// it cannot close the anchoring group ("x)|(.*").
func wholeMatch(expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fmt.Errorf("%q is not a regular expression: %w", expr, err)
	}
	return regexp.Compile("^(?:" + expr + ")$")
}

// Passes reports whether tag passes the filter but for Latest.
func (s *Selector) Passes(tag string) bool {
	if s.pattern != nil && !s.pattern.MatchString(tag) {
		return false
	}
	for _, re := range s.exclude {
		if re.MatchString(tag) {
			return false
		}
	}
	if s.semver != nil {
		v, err := semver.NewVersion(tag)
		if err != nil || !s.semver.Check(v) {
			return false
		}
	}
	return true
}

// MaxCreatedLookups bounds the tags whose creation time one Select reads (each is a manifest and
// a config read).
const MaxCreatedLookups = 500

// CreatedFunc tells when the image a tag names was created (its config's created time).
type CreatedFunc func(ctx context.Context, tag string) (time.Time, error)

// Select returns the tags that pass, sorted; with Latest, the newest N, newest first. created is
// asked only then, and only when some passing tag is not a semantic version.
func (s *Selector) Select(ctx context.Context, tags []string, created CreatedFunc) ([]string, error) {
	var out []string
	for _, t := range tags {
		if s.Passes(t) {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if s.latest == 0 {
		return out, nil
	}
	versions := make(map[string]*semver.Version, len(out))
	for _, t := range out {
		if v, err := semver.NewVersion(t); err == nil {
			versions[t] = v
		}
	}
	if len(versions) == len(out) {
		slices.SortFunc(out, func(a, b string) int {
			if c := versions[b].Compare(versions[a]); c != 0 {
				return c
			}
			return strings.Compare(b, a)
		})
		return out[:min(s.latest, len(out))], nil
	}
	if created == nil {
		return nil, errors.New("latest: some tags are no semantic version, and their creation times cannot be read")
	}
	if len(out) > MaxCreatedLookups {
		return nil, fmt.Errorf("latest: %d tags would have their creation time read (at most %d): select fewer with pattern, semver or exclude", len(out), MaxCreatedLookups)
	}
	times := make(map[string]time.Time, len(out))
	for _, t := range out {
		c, err := created(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("latest: reading when %s was created: %w", t, err)
		}
		times[t] = c
	}
	slices.SortFunc(out, func(a, b string) int {
		if c := times[b].Compare(times[a]); c != 0 {
			return c
		}
		return strings.Compare(b, a)
	})
	return out[:min(s.latest, len(out))], nil
}
