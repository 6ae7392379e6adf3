//go:build !unix

package scanner

import (
	"context"
	"errors"
)

// stripeLocks need flock; without it, analyses sharing a layer at once each analyse it.
type stripeLocks struct{}

func newStripeLocks(string) *stripeLocks { return &stripeLocks{} }

func (*stripeLocks) tryLockAll([]int) (int, error) {
	return 0, errors.New("no file locks on this platform")
}

func (*stripeLocks) waitFree(context.Context, int) error { return nil }

func (*stripeLocks) unlock(int) {}

func (*stripeLocks) unlockAll() {}
