package scanner

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

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
type crashMarks struct {
	dir        string
	retryAfter time.Duration
	now        func() time.Time

	// exclusive is held for reading by every analysis and for writing by a suspect's.
	exclusive sync.RWMutex
	mu        sync.Mutex
	// inFlight holds the mark each running analysis found, to put back on an orderly shutdown.
	inFlight map[string]crashMark
}

// crashMark is the content of a mark file.
type crashMark struct {
	// Attempts is the number of analyses of the digest that started and have not ended.
	Attempts int `json:"attempts"`
	// LastStart is when the last of them started.
	LastStart time.Time `json:"lastStart"`
}

func newCrashMarks(cacheDir string, retryAfter time.Duration) (*crashMarks, error) {
	dir := filepath.Join(cacheDir, "analysing")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating the analysis marks folder: %w", err)
	}
	if _, err := durable.RemoveTemporary(dir); err != nil {
		return nil, err
	}
	return &crashMarks{dir: dir, retryAfter: retryAfter, now: time.Now, inFlight: map[string]crashMark{}}, nil
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

// begin marks digest as being analysed and returns the function that ends the analysis. It
// refuses with an AnalysisCrashed error, and writes nothing, when the digest's analyses died
// CrashLimit times and the last started less than retryAfter ago.
func (c *crashMarks) begin(digest string) (end func(), err error) {
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
	suspect := prev.Attempts > 0
	if suspect {
		c.exclusive.Lock()
	} else {
		c.exclusive.RLock()
	}
	unlock := func() {
		if suspect {
			c.exclusive.Unlock()
		} else {
			c.exclusive.RUnlock()
		}
	}
	raw, _ := json.Marshal(crashMark{Attempts: prev.Attempts + 1, LastStart: now.UTC()})
	if err := durable.WriteFile(p, raw, 0o640); err != nil {
		unlock()
		return nil, fmt.Errorf("marking the analysis of %s: %w", digest, err)
	}
	c.mu.Lock()
	c.inFlight[digest] = prev
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
// are interrupted, not crashed.
func (c *crashMarks) forgetInFlight() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for digest, prev := range c.inFlight {
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
