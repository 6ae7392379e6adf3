package scanner

import (
	"context"
	"encoding/json"
	"errors"
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
	prev    CrashMark
	started time.Time
}

// CrashMark is the content of a mark file: written before work that may take the process down
// (an analysis here, a DB download in vulndb), removed when it ends.
type CrashMark struct {
	// Attempts is the number of times the work started and did not end.
	Attempts int `json:"attempts"`
	// LastStart is when the last of them started.
	LastStart time.Time `json:"lastStart"`
}

var errMalformedMark = errors.New("malformed mark")

// ReadCrashMark reads the mark at path: an error wrapping fs.ErrNotExist when there is none, and
// errMalformedMark for one that does not decode.
func ReadCrashMark(path string) (CrashMark, error) {
	var m CrashMark
	raw, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(raw, &m); err != nil || m.Attempts < 0 {
		return CrashMark{}, fmt.Errorf("%s: %w", path, errMalformedMark)
	}
	return m, nil
}

// WriteCrashMark writes m at path durably.
func WriteCrashMark(path string, m CrashMark) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return durable.WriteFile(path, raw, 0o640)
}

// RefusedUntil says until when work with this mark is refused: once it died limit times, for
// retryAfter after its last start.
func (m CrashMark) RefusedUntil(limit int, retryAfter time.Duration, now time.Time) (time.Time, bool) {
	until := m.LastStart.Add(retryAfter)
	return until, m.Attempts >= limit && now.Before(until)
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
	name, err := DigestFileName(digest)
	if err != nil {
		return "", err
	}
	return filepath.Join(c.dir, name), nil
}

// read returns digest's mark; a missing or unreadable one is no mark, a malformed one (marks are
// written durably, so never half) counts as one attempt.
func (c *crashMarks) read(digest string) CrashMark {
	p, err := c.path(digest)
	if err != nil {
		return CrashMark{}
	}
	m, err := ReadCrashMark(p)
	switch {
	case errors.Is(err, errMalformedMark):
		return CrashMark{Attempts: 1}
	case err != nil:
		return CrashMark{}
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
	if until, refused := prev.RefusedUntil(CrashLimit, c.retryAfter, now); refused {
		return nil, &registry.Error{
			Kind: registry.KindAnalysisCrashed, RetryAfter: until.Sub(now),
			Err: fmt.Errorf("the analysis of %s stopped the controller %d times (killed or out of memory); it is tried again after %s",
				digest, prev.Attempts, until.UTC().Format(time.RFC3339)),
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
	if err := WriteCrashMark(p, CrashMark{Attempts: prev.Attempts + 1, LastStart: now.UTC()}); err != nil {
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
		_ = WriteCrashMark(p, prev)
	}
	clear(c.inFlight)
}
