package registry

import (
	"errors"
	"sync"
	"time"
)

// ErrNotAsked marks a lookup that asked no registry (a registry known hung, no lookup slot free):
// it is no answer, and DigestCache keeps nothing of it.
var ErrNotAsked = errors.New("the registry was not asked")

// DefaultMaxDigests bounds a DigestCache whose MaxEntries is 0.
const DefaultMaxDigests = 10000

// DigestCache reuses recent tag-to-digest lookups: an answer for TTL, a failure for FailureTTL
// (failures are not kept when it is 0; a lookup that wraps ErrNotAsked never). Entries too old to
// be served are dropped as new ones come, and the cache never holds more than MaxEntries (others
// are dropped, whichever, when it is full of live ones): the references callers name are many.
type DigestCache struct {
	TTL        time.Duration
	FailureTTL time.Duration
	// MaxEntries bounds the entries (default DefaultMaxDigests).
	MaxEntries int

	mu        sync.Mutex
	entries   map[string]cachedDigest
	sweepSize int // the size at which expired entries are dropped next
}

type cachedDigest struct {
	digest string
	err    error
	at     time.Time
}

func (c *DigestCache) keep(err error) time.Duration {
	if err != nil {
		return c.FailureTTL
	}
	return c.TTL
}

// Resolve returns the answer kept for key at now, or calls lookup and keeps what it returns.
func (c *DigestCache) Resolve(key string, now time.Time, lookup func() (string, error)) (string, error) {
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < c.keep(e.err) {
		return e.digest, e.err
	}
	digest, err := lookup()
	if c.keep(err) <= 0 || errors.Is(err, ErrNotAsked) {
		return digest, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]cachedDigest{}
	}
	if len(c.entries) >= c.sweepSize {
		for k, e := range c.entries {
			if now.Sub(e.at) >= c.keep(e.err) {
				delete(c.entries, k)
			}
		}
		limit := c.MaxEntries
		if limit <= 0 {
			limit = DefaultMaxDigests
		}
		for k := range c.entries {
			if len(c.entries) < limit {
				break
			}
			delete(c.entries, k) // full of live entries: any goes, it is looked up again
		}
		// Sweep again when the live entries have doubled: amortised constant time per lookup.
		c.sweepSize = min(max(2*len(c.entries), 1024), limit)
	}
	c.entries[key] = cachedDigest{digest: digest, err: err, at: now}
	return digest, err
}
