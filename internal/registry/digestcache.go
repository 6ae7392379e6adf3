package registry

import (
	"sync"
	"time"
)

// DigestCache reuses recent tag-to-digest lookups: an answer for TTL, a failure for FailureTTL
// (failures are not kept when it is 0). Entries too old to be served are dropped as new ones come,
// so the cache holds no more than the distinct tags looked up within the longer of the two.
type DigestCache struct {
	TTL        time.Duration
	FailureTTL time.Duration

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
	if c.keep(err) <= 0 {
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
		// Sweep again when the live entries have doubled: amortised constant time per lookup.
		c.sweepSize = max(2*len(c.entries), 1024)
	}
	c.entries[key] = cachedDigest{digest: digest, err: err, at: now}
	return digest, err
}
