package scanner

import (
	"math/rand/v2"
	"strings"
	"testing"

	version "github.com/knqyf263/go-deb-version"
)

// debVersionSeeds are versions real and odd: epochs, revisions, tildes, pluses, letters, leading
// zeros, numbers past 64 bits, non-ASCII letters and bytes.
var debVersionSeeds = []string{
	"0", "1", "1.0", "1.0-1", "1.0-1+b1", "1.0-2", "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-2", "2:1.0",
	"3.0.15-1~deb12u1", "3.0.16-1~deb12u1", "3.0.15-1", "1.0~rc1", "1.0~rc1-1", "1.0~", "1.0~~",
	"1.0a", "1.0A", "1.0+dfsg", "1.0.dfsg", "1.0_1", "1.00", "1.000001", "01.1", "1.2.3.4.5.6",
	"38.0.0-1", "40.9.6-3", "1.0-1ubuntu0.1", "1.0-0ubuntu1", "9223372036854775808", "1.99999999999999999999999",
	"1.0é", "1.0ª", "1.0-µ", "7.88.1-10+deb12u8", "2.36-9+deb12u4", "1.0-", "1.0--1", "1:", "a1", "1.0+~",
}

var debVersionTokens = []string{
	"0", "1", "9", "10", "007", "99999999999999999999", ".", "-", "+", "~", ":", "_", "a", "z", "A", "Z",
	"dfsg", "deb12u", "b", "rc", "é", "ª", "\xaa",
}

func randomDebVersion(rng *rand.Rand) string {
	var b strings.Builder
	if rng.IntN(4) == 0 {
		b.WriteString([]string{"0:", "1:", "2:", "10:"}[rng.IntN(4)])
	}
	b.WriteString([]string{"0", "1", "2", "10"}[rng.IntN(4)])
	for range rng.IntN(8) {
		b.WriteString(debVersionTokens[rng.IntN(len(debVersionTokens))])
	}
	return b.String()
}

func checkDebVersion(t *testing.T, a, b string) {
	t.Helper()
	va, erra := version.NewVersion(a)
	vb, errb := version.NewVersion(b)
	if erra != nil || errb != nil {
		return // Trivy skips what the library cannot parse
	}
	if got, want := debCompare(newDebVersion(va), newDebVersion(vb)), va.Compare(vb); got != want {
		t.Errorf("debCompare(%q, %q) = %d, go-deb-version says %d", a, b, got, want)
	}
}

// TestDebVersionEqualsLibrary compares debCompare with go-deb-version on every pair of seeds and
// on random versions, so the comparison cannot drift from the library Trivy uses.
func TestDebVersionEqualsLibrary(t *testing.T) {
	for _, a := range debVersionSeeds {
		for _, b := range debVersionSeeds {
			checkDebVersion(t, a, b)
		}
	}
	rng := rand.New(rand.NewPCG(7, 11))
	for range 200_000 {
		checkDebVersion(t, randomDebVersion(rng), randomDebVersion(rng))
	}
}

func FuzzDebCompare(f *testing.F) {
	for i, a := range debVersionSeeds {
		f.Add(a, debVersionSeeds[(i+1)%len(debVersionSeeds)])
	}
	f.Fuzz(func(t *testing.T, a, b string) { checkDebVersion(t, a, b) })
}
