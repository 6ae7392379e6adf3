package scanner

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/imageguard/imageguard/internal/durable"
	"github.com/imageguard/imageguard/internal/registry"
)

// CrashLimit is how many analyses of one digest may die with the process before the digest is
// refused (AnalysisCrashed) until the retry interval has passed.
const CrashLimit = 2

// crashMarks remembers, in the cache, which digests are being analysed: a mark is written
// durably before an analysis starts and removed when it ends, whatever its result. A mark found
// when an analysis starts is one the process died with. A digest with marks is a suspect and is
// analysed alone, so that when it takes the process down again no other digest is marked with
// it; after CrashLimit marks it is refused until retryAfter has passed since its last attempt.
// The slots also bound the analyses running at once, whatever their callers do meanwhile.
type crashMarks struct {
	dir        string
	retryAfter time.Duration
	now        func() time.Time

	// slots bounds the analyses running at once: one takes a slot, a suspect's takes them all.
	slots    *semaphore.Weighted
	capacity int64
	stopped  bool
	mu       sync.Mutex
	// inFlight holds the mark each running analysis found, to put back on an orderly shutdown,
	// and when it started.
	inFlight map[string]running
	// stuckAfter: an analysis still running that long after it started is stuck (it passed its
	// deadline without ending), and counts as a crash even on an orderly shutdown; 0: never.
	stuckAfter time.Duration
}

// running is an analysis in flight.
type running struct {
	prev    crashMark
	started time.Time
}

// crashMark is the content of a mark file.
type crashMark struct {
	// Attempts is the number of analyses of the digest that started and have not ended.
	Attempts int `json:"attempts"`
	// LastStart is when the last of them started.
	LastStart time.Time `json:"lastStart"`
}

func newCrashMarks(cacheDir string, retryAfter time.Duration, concurrency int) (*crashMarks, error) {
	dir := filepath.Join(cacheDir, "analysing")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating the analysis marks folder: %w", err)
	}
	if _, err := durable.RemoveTemporary(dir); err != nil {
		return nil, err
	}
	capacity := int64(max(1, concurrency))
	return &crashMarks{dir: dir, retryAfter: retryAfter, now: time.Now, inFlight: map[string]running{},
		slots: semaphore.NewWeighted(capacity), capacity: capacity}, nil
}

func (c *crashMarks) path(digest string) (string, error) {
	if !digestPattern.MatchString(digest) {
		return "", fmt.Errorf("malformed digest %q", digest)
	}
	return filepath.Join(c.dir, "sha256-"+digest[len("sha256:"):]), nil
}

// read returns digest's mark; a missing or unreadable one is no mark.
func (c *crashMarks) read(digest string) crashMark {
	var m crashMark
	p, err := c.path(digest)
	if err != nil {
		return m
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		return m
	}
	if json.Unmarshal(raw, &m) != nil || m.Attempts < 0 {
		// Written durably, so never half; anything else counts as one attempt.
		return crashMark{Attempts: 1}
	}
	return m
}

// Crashes returns how many analyses of digest died with the process.
func (c *crashMarks) Crashes(digest string) int { return c.read(digest).Attempts }

// begin waits for a slot (all of them for a suspect) until ctx ends, marks digest as being
// analysed and returns the function that ends the analysis. It refuses with an AnalysisCrashed
// error, and writes nothing, when the digest's analyses died CrashLimit times and the last
// started less than retryAfter ago; and after forgetInFlight (the process is stopping).
func (c *crashMarks) begin(ctx context.Context, digest string) (end func(), err error) {
	p, err := c.path(digest)
	if err != nil {
		return nil, err
	}
	prev := c.read(digest)
	now := c.now()
	if prev.Attempts >= CrashLimit {
		if wait := prev.LastStart.Add(c.retryAfter).Sub(now); wait > 0 {
			return nil, &registry.Error{
				Kind: registry.KindAnalysisCrashed, RetryAfter: wait,
				Err: fmt.Errorf("the analysis of %s stopped the controller %d times (killed or out of memory); it is tried again after %s",
					digest, prev.Attempts, prev.LastStart.Add(c.retryAfter).UTC().Format(time.RFC3339)),
			}
		}
	}
	weight := int64(1)
	if prev.Attempts > 0 {
		weight = c.capacity
	}
	if err := c.slots.Acquire(ctx, weight); err != nil {
		return nil, registry.Errorf(registry.KindTimeout, "waiting for an analysis slot for %s: %v", digest, err)
	}
	unlock := func() { c.slots.Release(weight) }
	// Held from the check to the record, so that forgetInFlight sees every mark written.
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		unlock()
		return nil, registry.Errorf(registry.KindUnavailable, "the controller is stopping: the analysis of %s is left to the next start", digest)
	}
	raw, _ := json.Marshal(crashMark{Attempts: prev.Attempts + 1, LastStart: now.UTC()})
	if err := durable.WriteFile(p, raw, 0o640); err != nil {
		c.mu.Unlock()
		unlock()
		return nil, fmt.Errorf("marking the analysis of %s: %w", digest, err)
	}
	c.inFlight[digest] = running{prev: prev, started: now}
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		_, running := c.inFlight[digest]
		delete(c.inFlight, digest)
		// After forgetInFlight the mark is the one put back: left alone.
		if running {
			_ = durable.Remove(p)
		}
		c.mu.Unlock()
		unlock()
	}, nil
}

// forgetInFlight puts back the marks the running analyses found: on an orderly shutdown they
// are interrupted, not crashed; except those stuck past their deadline.
func (c *crashMarks) forgetInFlight() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	for digest, r := range c.inFlight {
		prev := r.prev
		if c.stuckAfter > 0 && c.now().Sub(r.started) > c.stuckAfter {
			continue // its mark, written when it started, stays: stuck counts as crashed
		}
		p, err := c.path(digest)
		if err != nil {
			continue
		}
		if prev.Attempts == 0 {
			_ = durable.Remove(p)
			continue
		}
		raw, _ := json.Marshal(prev)
		_ = durable.WriteFile(p, raw, 0o640)
	}
	clear(c.inFlight)
}
