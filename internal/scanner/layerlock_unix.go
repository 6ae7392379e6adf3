//go:build unix

package scanner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// stripeLocks are advisory locks (flock) on the lock files of a layer cache folder, shared by the
// analyses of this process and of worker processes. The kernel drops a lock when its process
// ends, so an analysis that crashes holds nothing.
type stripeLocks struct {
	dir  string
	held map[int]*os.File
}

func newStripeLocks(dir string) *stripeLocks {
	return &stripeLocks{dir: dir, held: map[int]*os.File{}}
}

func (l *stripeLocks) path(stripe int) string {
	return filepath.Join(l.dir, fmt.Sprintf("%02x", stripe))
}

// tryLock takes stripe without waiting; false: another holds it.
func (l *stripeLocks) tryLock(stripe int) (*os.File, bool, error) {
	f, err := os.OpenFile(l.path(stripe), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return f, true, nil
}

// tryLockAll takes every stripe of stripes, or none: it returns -1 when it took them all, or the
// first stripe another holds (having released what it took).
func (l *stripeLocks) tryLockAll(stripes []int) (int, error) {
	var taken []int
	for _, s := range stripes {
		if _, ok := l.held[s]; ok {
			continue
		}
		f, ok, err := l.tryLock(s)
		if err != nil || !ok {
			for _, t := range taken {
				l.unlock(t)
			}
			if err != nil {
				return 0, err
			}
			return s, nil
		}
		l.held[s] = f
		taken = append(taken, s)
	}
	return -1, nil
}

// waitFree returns once stripe is free (taking and releasing it), or ctx is done.
func (l *stripeLocks) waitFree(ctx context.Context, stripe int) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		f, ok, err := l.tryLock(stripe)
		if err != nil {
			return err
		}
		if ok {
			return f.Close()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// unlock releases stripe if held.
func (l *stripeLocks) unlock(stripe int) {
	if f, ok := l.held[stripe]; ok {
		// Closing the file releases its lock.
		_ = f.Close()
		delete(l.held, stripe)
	}
}

func (l *stripeLocks) unlockAll() {
	for s := range l.held {
		l.unlock(s)
	}
}
