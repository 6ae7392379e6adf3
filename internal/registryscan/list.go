package registryscan

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/time/rate"

	"github.com/imageguard/imageguard/internal/imageref"
	"github.com/imageguard/imageguard/internal/registry"
)

// Defaults of a Lister.
const (
	DefaultPageSize        = 100
	DefaultMaxTags         = 10_000
	DefaultMaxRepositories = 1_000
	// DefaultPagesPerSecond is each registry's pace of listing requests (a burst of as many).
	DefaultPagesPerSecond = 10
)

// Lister lists repositories and tags, page by page (the registry's Link headers, as
// go-containerregistry follows them), each registry at its own pace. A registry's Retry-After
// holds every request to it (the registry client's transport), and the listing fails with the
// wait, for the caller to try again after it.
type Lister struct {
	Registry *registry.Client
	// PageSize is the n of each page's request; 0: DefaultPageSize.
	PageSize int
	// MaxTags bounds the tags of one repository, MaxRepositories those one prefix lists; past
	// them the listing fails, so that nothing is left out unsaid. 0: the defaults.
	MaxTags, MaxRepositories int
	// PagesPerSecond paces the listing requests to each registry; 0: DefaultPagesPerSecond.
	PagesPerSecond float64

	once   sync.Once
	mu     sync.Mutex
	limits map[string]*rate.Limiter
}

func (l *Lister) init() {
	l.once.Do(func() {
		if l.PageSize <= 0 {
			l.PageSize = DefaultPageSize
		}
		if l.MaxTags <= 0 {
			l.MaxTags = DefaultMaxTags
		}
		if l.MaxRepositories <= 0 {
			l.MaxRepositories = DefaultMaxRepositories
		}
		if l.PagesPerSecond <= 0 {
			l.PagesPerSecond = DefaultPagesPerSecond
		}
		l.limits = map[string]*rate.Limiter{}
	})
}

// wait holds until host's pace allows one more request, or ctx ends.
func (l *Lister) wait(ctx context.Context, host string) error {
	host = imageref.CanonicalHost(host)
	l.mu.Lock()
	lim := l.limits[host]
	if lim == nil {
		burst := max(1, int(l.PagesPerSecond))
		lim = rate.NewLimiter(rate.Limit(l.PagesPerSecond), burst)
		l.limits[host] = lim
	}
	l.mu.Unlock()
	if err := lim.Wait(ctx); err != nil {
		return registry.Errorf(registry.KindTimeout, "listing %s: %v", host, err)
	}
	return nil
}

// Repositories returns the repositories entry names: itself, or for a prefix
// ("registry.example.com/team/**") every repository of the registry's catalog under it, sorted.
func (l *Lister) Repositories(ctx context.Context, entry string, keychain authn.Keychain) ([]string, error) {
	l.init()
	e, err := ParseEntry(entry)
	if err != nil {
		return nil, registry.Errorf(registry.KindUnsupported, "%v", err)
	}
	repo, err := l.repository(e.someRepository())
	if err != nil {
		return nil, err
	}
	if !e.Prefix {
		return []string{imageref.CanonicalRepository(repo.RegistryStr(), repo.RepositoryStr())}, nil
	}
	under := repo.RepositoryStr() + "/"
	if e.Path == "" {
		under = ""
	}
	reg := repo.Registry
	p, err := remote.NewPuller(l.options(ctx, repo, keychain)...)
	if err != nil {
		return nil, registry.Classify(err)
	}
	if err := l.wait(ctx, reg.RegistryStr()); err != nil {
		return nil, err
	}
	pages, err := p.Catalogger(ctx, reg)
	if err != nil {
		return nil, registry.Classify(fmt.Errorf("listing the catalog of %s: %w", reg.RegistryStr(), err))
	}
	repos, err := collect(ctx, l, reg.RegistryStr(), "the catalog of "+reg.RegistryStr(), pages, func(c *remote.Catalogs) []string { return c.Repos },
		func(r string) bool { return strings.HasPrefix(r, under) }, l.MaxRepositories,
		registry.Errorf(registry.KindUnsupported, "%s holds more than %d repositories: name fewer", entry, l.MaxRepositories))
	if err != nil {
		return nil, err
	}
	for i, r := range repos {
		repos[i] = imageref.CanonicalRepository(reg.RegistryStr(), r)
	}
	return repos, nil
}

// Tags returns the tags of repo, all of them (sorted), or an error.
func (l *Lister) Tags(ctx context.Context, repo string, keychain authn.Keychain) ([]string, error) {
	l.init()
	r, err := l.repository(repo)
	if err != nil {
		return nil, err
	}
	p, err := remote.NewPuller(l.options(ctx, r, keychain)...)
	if err != nil {
		return nil, registry.Classify(err)
	}
	if err := l.wait(ctx, r.RegistryStr()); err != nil {
		return nil, err
	}
	pages, err := p.Lister(ctx, r)
	if err != nil {
		return nil, registry.Classify(fmt.Errorf("listing the tags of %s: %w", repo, err))
	}
	return collect(ctx, l, r.RegistryStr(), "the tags of "+repo, pages, func(t *remote.Tags) []string { return t.Tags },
		nil, l.MaxTags, registry.Errorf(registry.KindUnsupported, "%s has more than %d tags: list fewer", repo, l.MaxTags))
}

// pager is go-containerregistry's Lister or Catalogger: its first page read, the others to come.
type pager[P any] interface {
	HasNext() bool
	Next(ctx context.Context) (P, error)
}

// collect returns the names of every page of pages that keep passes (nil: all), sorted, pacing
// each request after the first to host; more than limit of them is tooMany.
func collect[P any](ctx context.Context, l *Lister, host, what string, pages pager[P], names func(P) []string, keep func(string) bool, limit int, tooMany error) ([]string, error) {
	var out []string
	for listed := 0; pages.HasNext(); listed++ {
		if listed > 0 {
			if err := l.wait(ctx, host); err != nil {
				return nil, err
			}
		}
		page, err := pages.Next(ctx)
		if err != nil {
			return nil, registry.Classify(fmt.Errorf("listing %s: %w", what, err))
		}
		for _, n := range names(page) {
			if keep == nil || keep(n) {
				out = append(out, n)
			}
		}
		if len(out) > limit {
			return nil, tooMany
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func (l *Lister) repository(repo string) (name.Repository, error) {
	ref, err := l.Registry.ParseReference(repo + ":latest")
	if err != nil {
		return name.Repository{}, registry.Errorf(registry.KindUnsupported, "%s is not a repository: %v", repo, err)
	}
	return ref.Context(), nil
}

func (l *Lister) options(ctx context.Context, repo name.Repository, keychain authn.Keychain) []remote.Option {
	return append(l.Registry.RemoteOptions(ctx, repo.Tag("latest"), keychain), remote.WithPageSize(l.PageSize))
}

// resolveWorkers is how many tags of a repository are resolved at once (each still paced).
const resolveWorkers = 4

// Digests returns the digest each of tags of repo points at now (a HEAD request each, paced as
// the listing is), and the error of each tag that could not be resolved.
func (l *Lister) Digests(ctx context.Context, repo string, tags []string, keychain authn.Keychain) (map[string]string, map[string]error) {
	l.init()
	digests := make(map[string]string, len(tags))
	failed := map[string]error{}
	r, err := l.repository(repo)
	if err != nil {
		for _, t := range tags {
			failed[t] = err
		}
		return digests, failed
	}
	var mu sync.Mutex
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(resolveWorkers, len(tags)) {
		wg.Go(func() {
			for tag := range work {
				var digest string
				err := l.wait(ctx, r.RegistryStr())
				if err == nil {
					digest, err = l.Registry.ResolveDigest(ctx, repo+":"+tag, keychain)
				}
				mu.Lock()
				if err != nil {
					failed[tag] = err
				} else {
					digests[tag] = digest
				}
				mu.Unlock()
			}
		})
	}
	for _, t := range tags {
		work <- t
	}
	close(work)
	wg.Wait()
	return digests, failed
}

// maxConfigBytes bounds the image config read for its creation time.
const maxConfigBytes = 1 << 20

// Created returns a CreatedFunc reading a tag's creation time from its image's config in repo (of
// the client's platform, for an index), paced as the listing is.
func (l *Lister) Created(repo string, keychain authn.Keychain) CreatedFunc {
	l.init()
	return func(ctx context.Context, tag string) (time.Time, error) {
		ref, err := l.Registry.ParseReference(repo + ":" + tag)
		if err != nil {
			return time.Time{}, registry.Errorf(registry.KindUnsupported, "%s:%s is not a reference: %v", repo, tag, err)
		}
		if err := l.wait(ctx, ref.Context().RegistryStr()); err != nil {
			return time.Time{}, err
		}
		img, err := remote.Image(ref, l.Registry.RemoteOptions(ctx, ref, keychain)...)
		if err != nil {
			return time.Time{}, registry.Classify(fmt.Errorf("reading %s:%s: %w", repo, tag, err))
		}
		m, err := img.Manifest()
		if err != nil {
			return time.Time{}, registry.Classify(fmt.Errorf("reading %s:%s: %w", repo, tag, err))
		}
		if m.Config.Size > maxConfigBytes {
			return time.Time{}, registry.Errorf(registry.KindUnsupported, "%s:%s: its config is %d bytes, more than %d", repo, tag, m.Config.Size, maxConfigBytes)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return time.Time{}, registry.Classify(fmt.Errorf("reading the config of %s:%s: %w", repo, tag, err))
		}
		return cf.Created.Time, nil
	}
}
