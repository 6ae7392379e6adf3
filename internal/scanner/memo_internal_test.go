package scanner

import (
	"fmt"
	"testing"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/scan/utils"
)

// The memo's maps stay under their bound, least recently used out first, and a value heavier than
// the bound is not kept.
func TestMemoLRUStaysUnderItsBound(t *testing.T) {
	c := newLRU[string, int](10)
	for i := range 5 {
		c.add(fmt.Sprint(i), i, 3)
	}
	if c.weight > 10 || len(c.byKey) != 3 {
		t.Fatalf("weight %d, %d entries; want at most 10, 3 entries", c.weight, len(c.byKey))
	}
	if _, ok := c.get("1"); ok {
		t.Fatal("the least recently used entry is still kept")
	}
	c.get("2") // now the most recent
	c.add("5", 5, 3)
	if _, ok := c.get("2"); !ok {
		t.Fatal("an entry read last was evicted before older ones")
	}
	if _, ok := c.get("3"); ok {
		t.Fatal("the least recently used entry is still kept")
	}
	c.add("big", 0, 11)
	if _, ok := c.get("big"); ok || c.weight > 10 {
		t.Fatalf("a value over the bound was kept (weight %d)", c.weight)
	}
	var unused *lru[string, int] // a memo before its first use
	unused.add("x", 1, 1)
	if _, ok := unused.get("x"); ok {
		t.Fatal("a nil lru kept a value")
	}
	c.add("4", 40, 1) // kept already: unchanged
	if v, _ := c.get("4"); v != 4 {
		t.Fatalf("a second add replaced the kept value: %d", v)
	}
}

// debFormatVersion formats as Trivy's utils.FormatVersion does.
func TestDebFormatVersionEqualsTrivy(t *testing.T) {
	for _, p := range []ftypes.Package{
		{Version: "1.2.3"}, {Version: "1.2.3", Release: "4"}, {Epoch: 1, Version: "2.0"},
		{Epoch: 2, Version: "2.0", Release: "1+deb12u1"}, {Epoch: -1, Version: "x"}, {},
	} {
		if got, want := debFormatVersion(p.Epoch, p.Version, p.Release), utils.FormatVersion(p); got != want {
			t.Errorf("%+v: %q, Trivy %q", p, got, want)
		}
	}
}
