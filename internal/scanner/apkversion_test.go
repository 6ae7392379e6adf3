package scanner

import (
	"math/rand/v2"
	"strings"
	"testing"

	apkversion "github.com/knqyf263/go-apk-version"
)

// apkVersionSeeds are versions real and malformed: every token kind, leading zeros, each suffix,
// a revision without a number, letters where digits belong, non-ASCII digits and invalid UTF-8.
var apkVersionSeeds = []string{
	"", "0", "1", "1.0", "1.0.0", "1.0.0-r0", "1.0.0-r1", "1.0.0-r10", "1.0.1-r0", "0.9.0-r0",
	"3.5.1-r0", "3.5.2-r0", "1.37.0-r18", "1.37.0-r19", "1.2.13.dfsg-1", "1.02", "1.002", "1.2",
	"1.2a", "1.2b", "1.2a1", "1.2_alpha", "1.2_alpha1", "1.2_beta2", "1.2_pre3", "1.2_rc1",
	"1.2_cvs", "1.2_svn", "1.2_git20200101", "1.2_hg1", "1.2_p1", "1.2_p", "1.2_beta_p1",
	"1.2_foo", "1.2_", "1.2__", "1.2-", "1.2-r", "1.2-rX", "1.2-r0-r1", "1..2", ".1", "1.",
	"-", "_", "r0", "abc", "a1", "1:1.0", "1.0+build", "1.0A", "1.0Ab", "1.٣", "٣.1", "1.0é",
	"1.0\xff", "1.0-r0\xff", "00", "0.0.0", "1.0.0_rc1-r0", "1.0.0_p1-r0", "2.0.7.0.1.sp1",
	"9999999999999999999", "1.99999999999999999999",
}

// apkVersionTokens build random versions; they favour strings the token machine treats
// differently.
var apkVersionTokens = []string{
	"0", "00", "1", "2", "9", "10", "007", ".", ".", "-", "-r", "-r0", "_", "r", "a", "z", "A",
	"alpha", "beta", "pre", "rc", "cvs", "svn", "git", "hg", "p", "al", "pr", "٣", "é", "\xff", "+",
}

func randomAPKVersion(rng *rand.Rand) string {
	var b strings.Builder
	for range rng.IntN(9) {
		b.WriteString(apkVersionTokens[rng.IntN(len(apkVersionTokens))])
	}
	return b.String()
}

func checkAPKVersion(t *testing.T, a, b string) {
	t.Helper()
	if got, want := apkValid(a), apkversion.Valid(a); got != want {
		t.Errorf("apkValid(%q) = %v, go-apk-version says %v", a, got, want)
	}
	if got, want := apkCompare(a, b), apkversion.Version(a).Compare(apkversion.Version(b)); got != want {
		t.Errorf("apkCompare(%q, %q) = %d, go-apk-version says %d", a, b, got, want)
	}
}

// TestAPKVersionEqualsLibrary compares apkValid and apkCompare with go-apk-version on every pair of
// seeds and on random versions, so the in-place reading cannot drift from the library Trivy uses.
func TestAPKVersionEqualsLibrary(t *testing.T) {
	long := strings.Repeat("1.", apkInPlaceMax) + "0"
	seeds := append(append([]string{}, apkVersionSeeds...), long, long+"_rc1")
	for _, a := range seeds {
		for _, b := range seeds {
			checkAPKVersion(t, a, b)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 50_000 {
		a := randomAPKVersion(rng)
		checkAPKVersion(t, a, randomAPKVersion(rng))
		checkAPKVersion(t, a, seeds[rng.IntN(len(seeds))])
		if t.Failed() {
			return
		}
	}
}

// FuzzAPKVersion is TestAPKVersionEqualsLibrary for `go test -fuzz FuzzAPKVersion`.
func FuzzAPKVersion(f *testing.F) {
	for i, a := range apkVersionSeeds {
		f.Add(a, apkVersionSeeds[(i+1)%len(apkVersionSeeds)])
	}
	f.Fuzz(func(t *testing.T, a, b string) { checkAPKVersion(t, a, b) })
}
