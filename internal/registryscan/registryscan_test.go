package registryscan

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/testutil"
)

// world is a registry of three repositories with 1,500 tags in all (500 each: 1.0.0 to 4.24.x,
// release candidates, commit tags, "latest" and "stable"), several tags per digest, and a fourth
// repository elsewhere.
type world struct {
	reg    *testutil.Registry
	client *registry.Client
	// created is the creation time each repository's tag's image has.
	created map[string]map[string]time.Time
}

var repos = []string{"team/api", "team/web", "team/worker"}

func newWorld(t testing.TB, opts ...testutil.RegistryOption) *world {
	t.Helper()
	w := &world{reg: testutil.NewRegistry(t, opts...), created: map[string]map[string]time.Time{}}
	w.client = registry.NewClient(registry.Options{InsecureHosts: []string{w.reg.Host()}, Timeout: 10 * time.Second})
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, repo := range repos {
		w.created[repo] = map[string]time.Time{}
		// 100 images, five tags each.
		for i := range 100 {
			created := base.Add(time.Duration(i) * time.Hour)
			img := w.image(t, repo, i, created)
			major, minor := 1+i/25, i%25
			tags := []string{
				fmt.Sprintf("%d.%d.0", major, minor), fmt.Sprintf("v%d.%d.0", major, minor), fmt.Sprintf("%d.%d.0-rc.1", major, minor),
				fmt.Sprintf("sha-%07x", i*7919+len(repo)), fmt.Sprintf("build-%03d", i),
			}
			switch i {
			case 99:
				tags[4] = "latest"
			case 50:
				tags[4] = "stable"
			}
			w.push(t, repo, img, tags)
			for _, tag := range tags {
				w.created[repo][tag] = created
			}
		}
	}
	w.push(t, "other/thing", w.image(t, "other/thing", 0, base), []string{"1.0.0"})
	return w
}

func (w *world) image(t testing.TB, repo string, i int, created time.Time) v1.Image {
	t.Helper()
	layer, err := testutil.LayerFromFiles(map[string][]byte{"etc/release": fmt.Appendf(nil, "%s %d", repo, i)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: "amd64"}, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// push writes img under its first tag and tags it with the others (a manifest PUT each).
func (w *world) push(t testing.TB, repo string, img v1.Image, tags []string) {
	t.Helper()
	ref, _ := w.reg.Push(t, repo, tags[0], img)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	src, err := name.ParseReference(strings.Replace(ref, ":"+tags[0], "@"+d.String(), 1), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range tags[1:] {
		if err := remote.Tag(src.Context().Tag(tag), desc); err != nil {
			t.Fatal(err)
		}
	}
}

// created reads a tag's creation time from its image's config in the registry, as a scan does.
func (w *world) createdFunc(repo string) CreatedFunc {
	return func(ctx context.Context, tag string) (time.Time, error) {
		ref, err := w.client.ParseReference(w.reg.Host() + "/" + repo + ":" + tag)
		if err != nil {
			return time.Time{}, err
		}
		img, err := remote.Image(ref, w.client.RemoteOptions(ctx, ref, nil)...)
		if err != nil {
			return time.Time{}, err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return time.Time{}, err
		}
		return cf.Created.Time, nil
	}
}

// TestListAndSelect lists 1,500 tags over three repositories, 100 to a page, and checks what each
// filter selects against the real registry.
func TestListAndSelect(t *testing.T) {
	g := NewWithT(t)
	w := newWorld(t)
	l := &Lister{Registry: w.client, PageSize: 100}
	ctx := context.Background()

	w.reg.ResetCounts()
	found, err := l.Repositories(ctx, w.reg.Host()+"/team/**", nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(found).To(Equal([]string{w.reg.Host() + "/team/api", w.reg.Host() + "/team/web", w.reg.Host() + "/team/worker"}))
	all, err := l.Repositories(ctx, w.reg.Host()+"/**", nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(all).To(HaveLen(4))
	exact, err := l.Repositories(ctx, w.reg.Host()+"/team/api", nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(exact).To(Equal([]string{w.reg.Host() + "/team/api"}))

	tags := map[string][]string{}
	total := 0
	w.reg.ResetCounts()
	for _, repo := range repos {
		got, err := l.Tags(ctx, w.reg.Host()+"/"+repo, nil)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got).To(HaveLen(500))
		g.Expect(slices.IsSorted(got)).To(BeTrue())
		tags[repo] = got
		total += len(got)
	}
	g.Expect(total).To(Equal(1500))
	// Five pages per repository (and go-containerregistry's ping); no more.
	g.Expect(w.reg.Counts().Requests).To(BeNumerically("<=", 3*(5+2)))

	tests := map[string]struct {
		filter TagFilter
		repo   string
		want   []string // exactly, in order
		count  int      // else how many
		check  func(Gomega, []string)
	}{
		"every tag":               {filter: TagFilter{}, repo: "team/api", count: 500},
		"a semver range":          {filter: TagFilter{Semver: ">= 4.20.0, < 4.23.0"}, repo: "team/api", want: []string{"4.20.0", "4.21.0", "4.22.0", "v4.20.0", "v4.21.0", "v4.22.0"}},
		"a caret range":           {filter: TagFilter{Semver: "^2.0.0"}, repo: "team/web", count: 50},
		"pre-releases by name":    {filter: TagFilter{Semver: ">= 4.24.0-rc.0"}, repo: "team/web", want: []string{"4.24.0", "4.24.0-rc.1", "v4.24.0"}},
		"a pattern":               {filter: TagFilter{Pattern: `\d+\.\d+\.0`}, repo: "team/worker", count: 100},
		"a pattern matches whole": {filter: TagFilter{Pattern: `1\.0`}, repo: "team/worker", count: 0},
		"exclude":                 {filter: TagFilter{Pattern: `v?\d+\.\d+\.0(-rc\.1)?`, Exclude: []string{`.*-rc\.\d+`, `v.*`}}, repo: "team/api", count: 100},
		"latest by semver": {filter: TagFilter{Semver: ">= 1.0.0", Exclude: []string{`v.*`}, Latest: 3}, repo: "team/api",
			want: []string{"4.24.0", "4.23.0", "4.22.0"}},
		"latest by creation time": {filter: TagFilter{Pattern: `sha-[0-9a-f]+`, Latest: 2}, repo: "team/web",
			check: func(g Gomega, got []string) {
				g.Expect(got).To(HaveLen(2))
				g.Expect(w.created["team/web"][got[0]]).To(Equal(time.Date(2026, 1, 5, 3, 0, 0, 0, time.UTC)))
				g.Expect(w.created["team/web"][got[1]]).To(Equal(time.Date(2026, 1, 5, 2, 0, 0, 0, time.UTC)))
			}},
		"latest among names and versions": {filter: TagFilter{Pattern: `latest|stable|1\.0\.0`, Latest: 1}, repo: "team/worker", want: []string{"latest"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			s, err := Compile(tt.filter)
			g.Expect(err).NotTo(HaveOccurred())
			got, err := s.Select(ctx, tags[tt.repo], w.createdFunc(tt.repo))
			g.Expect(err).NotTo(HaveOccurred())
			switch {
			case tt.want != nil:
				g.Expect(got).To(Equal(tt.want))
			case tt.check != nil:
				tt.check(g, got)
			default:
				g.Expect(got).To(HaveLen(tt.count))
			}
		})
	}

	// Digests: what a scan analyses, once each whatever the number of its tags.
	s, err := Compile(TagFilter{Semver: ">= 1.0.0-0"})
	g.Expect(err).NotTo(HaveOccurred())
	selected, err := s.Select(ctx, tags["team/api"], nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(selected).To(HaveLen(300))
	digests := map[string]bool{}
	for _, tag := range selected {
		ref, err := w.client.ParseReference(w.reg.Host() + "/team/api:" + tag)
		g.Expect(err).NotTo(HaveOccurred())
		d, err := remote.Head(ref, w.client.RemoteOptions(ctx, ref, nil)...)
		g.Expect(err).NotTo(HaveOccurred())
		digests[d.Digest.String()] = true
	}
	g.Expect(digests).To(HaveLen(100))
}

func TestCompileRefusesBadFilters(t *testing.T) {
	for name, f := range map[string]TagFilter{
		"a range that does not parse":       {Semver: ">= one"},
		"a pattern that does not compile":   {Pattern: "("},
		"a pattern that escapes its anchor": {Pattern: "x)|(.*"},
		"an exclude that does not compile":  {Exclude: []string{"["}},
		"a negative count":                  {Latest: -1},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Compile(f); err == nil {
				t.Fatal("compiled")
			}
		})
	}
}

// TestListingIsBounded: a repository with more tags than MaxTags fails the listing, naming the
// bound, after reading no more pages than the bound needs; a registry asking for a wait
// (Retry-After) fails it with that wait, and is not asked again before it.
func TestListingIsBounded(t *testing.T) {
	g := NewWithT(t)
	w := newWorld(t)
	ctx := context.Background()
	l := &Lister{Registry: w.client, PageSize: 50, MaxTags: 120}
	w.reg.ResetCounts()
	_, err := l.Tags(ctx, w.reg.Host()+"/team/api", nil)
	g.Expect(err).To(MatchError(ContainSubstring("more than 120 tags")))
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported))
	g.Expect(w.reg.Counts().Requests).To(BeNumerically("<=", 3+2))

	var mu sync.Mutex
	asked := 0
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/tags/list") {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		asked++
		rw.Header().Set("Retry-After", "120")
		rw.WriteHeader(http.StatusTooManyRequests)
		return true
	})
	l = &Lister{Registry: w.client}
	_, err = l.Tags(ctx, w.reg.Host()+"/team/web", nil)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindRateLimited))
	_, err = l.Tags(ctx, w.reg.Host()+"/team/worker", nil)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindRateLimited))
	wait, ok := registry.RetryAfter(err)
	g.Expect(ok).To(BeTrue())
	g.Expect(wait).To(BeNumerically(">", time.Minute))
	mu.Lock()
	g.Expect(asked).To(Equal(1), "no request before the Retry-After")
	mu.Unlock()
}

// BenchmarkList1500Tags lists the three repositories' 1,500 tags, 100 to a page, from the
// in-process registry, and selects a semver range from them.
func BenchmarkList1500Tags(b *testing.B) {
	w := newWorld(b)
	l := &Lister{Registry: w.client, PageSize: 100, PagesPerSecond: 1000}
	s, err := Compile(TagFilter{Semver: "^3.0.0"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		n := 0
		for _, repo := range repos {
			tags, err := l.Tags(ctx, w.reg.Host()+"/"+repo, nil)
			if err != nil {
				b.Fatal(err)
			}
			sel, err := s.Select(ctx, tags, nil)
			if err != nil {
				b.Fatal(err)
			}
			n += len(sel)
		}
		if n != 150 {
			b.Fatalf("selected %d", n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/listing")
}
