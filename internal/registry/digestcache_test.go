package registry

import (
	"errors"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestDigestCache(t *testing.T) {
	g := NewWithT(t)
	c := &DigestCache{TTL: 5 * time.Minute, FailureTTL: 30 * time.Second}
	now := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	lookups := 0
	answer := func(d string, err error) func() (string, error) {
		return func() (string, error) { lookups++; return d, err }
	}
	d, err := c.Resolve("app:1", now, answer("sha256:a", nil))
	g.Expect(d, err).To(Equal("sha256:a"))
	d, _ = c.Resolve("app:1", now.Add(4*time.Minute), answer("sha256:b", nil))
	g.Expect(d).To(Equal("sha256:a"), "kept for TTL")
	d, _ = c.Resolve("app:1", now.Add(5*time.Minute), answer("sha256:b", nil))
	g.Expect(d).To(Equal("sha256:b"), "looked up again after TTL")

	down := errors.New("registry down")
	_, err = c.Resolve("db:1", now, answer("", down))
	g.Expect(err).To(MatchError(down))
	_, err = c.Resolve("db:1", now.Add(29*time.Second), answer("sha256:c", nil))
	g.Expect(err).To(MatchError(down), "a failure is kept for FailureTTL")
	d, _ = c.Resolve("db:1", now.Add(30*time.Second), answer("sha256:c", nil))
	g.Expect(d).To(Equal("sha256:c"))
	g.Expect(lookups).To(Equal(4))

	// Without a FailureTTL failures are not kept.
	noFailures := &DigestCache{TTL: time.Minute}
	_, _ = noFailures.Resolve("x:1", now, answer("", down))
	d, _ = noFailures.Resolve("x:1", now, answer("sha256:d", nil))
	g.Expect(d).To(Equal("sha256:d"))

	// Expired entries are dropped as new ones come: the map stays bounded by the live ones.
	for i := range 5000 {
		_, _ = c.Resolve(fmt.Sprintf("churn:%d", i), now.Add(time.Duration(i)*time.Second), answer("sha256:e", nil))
	}
	g.Expect(len(c.entries)).To(BeNumerically("<", 2*300+1024), "only about TTL's worth (300 s) of entries is live")

	// Never more than MaxEntries, however many live references callers name.
	small := &DigestCache{TTL: time.Hour, FailureTTL: time.Hour, MaxEntries: 100}
	for i := range 5000 {
		_, _ = small.Resolve(fmt.Sprintf("flood:%d", i), now, answer("", down))
	}
	g.Expect(len(small.entries)).To(BeNumerically("<=", 100))

	// A lookup that asked no registry is no answer: nothing is kept.
	lookups = 0
	_, err = c.Resolve("skipped:1", now, answer("", fmt.Errorf("slots full: %w", ErrNotAsked)))
	g.Expect(err).To(MatchError(ErrNotAsked))
	d, _ = c.Resolve("skipped:1", now, answer("sha256:f", nil))
	g.Expect(d).To(Equal("sha256:f"))
	g.Expect(lookups).To(Equal(2))
}
