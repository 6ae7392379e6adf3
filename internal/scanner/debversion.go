package scanner

import (
	"math"
	"unicode"

	version "github.com/knqyf263/go-deb-version"
)

// debVersion is a Debian version parsed by go-deb-version (the library Trivy's Debian detector
// uses), kept in parts so that debCompare can compare it without that library's regular
// expressions, which took most of a re-match.
type debVersion struct {
	epoch              int
	upstream, revision string
}

func newDebVersion(v version.Version) debVersion {
	return debVersion{epoch: v.Epoch(), upstream: v.Version(), revision: v.Revision()}
}

// debCompare is go-deb-version's Version.Compare, value for value: the epochs, then the upstream
// versions, then the revisions, each string compared as that library compares them.
// TestDebVersionEqualsLibrary and FuzzDebCompare hold it to the library.
func debCompare(a, b debVersion) int {
	if a == b {
		return 0
	}
	if a.epoch > b.epoch {
		return 1
	} else if a.epoch < b.epoch {
		return -1
	}
	if d := debCompareString(a.upstream, b.upstream); d != 0 {
		return d
	}
	return debCompareString(a.revision, b.revision)
}

// debCompareString is go-deb-version's compare: both strings are split into alternating runs,
// non-digits first (empty when a string starts with a digit), then ASCII digits read as a number
// (clamped as strconv.Atoi clamps); the non-digit runs are compared by debOrder, byte by byte, the
// numbers by difference; a missing run is "" or 0.
func debCompareString(a, b string) int {
	if a == b {
		return 0
	}
	for i, j := 0, 0; i < len(a) || j < len(b); {
		var sa, sb string
		sa, i = debRun(a, i, false)
		sb, j = debRun(b, j, false)
		if d := debCompareRun(sa, sb); d != 0 {
			return d
		}
		var na, nb string
		na, i = debRun(a, i, true)
		nb, j = debRun(b, j, true)
		if d := debNumber(na) - debNumber(nb); d != 0 {
			return d
		}
	}
	return 0
}

// debRun returns the run of digits (or of non-digits) of s from i, and where it ends.
func debRun(s string, i int, digits bool) (string, int) {
	start := i
	for i < len(s) && (s[i] >= '0' && s[i] <= '9') == digits {
		i++
	}
	return s[start:i], i
}

// debNumber reads a run of ASCII digits as strconv.Atoi does, clamping past the largest int; an
// empty run is 0.
func debNumber(run string) int {
	n := 0
	for k := 0; k < len(run); k++ {
		d := int(run[k] - '0')
		if n > (math.MaxInt-d)/10 {
			return math.MaxInt
		}
		n = n*10 + d
	}
	return n
}

// debCompareRun is go-deb-version's compareString.
func debCompareRun(a, b string) int {
	if a == b {
		return 0
	}
	for k := 0; k < max(len(a), len(b)); k++ {
		x, y := 0, 0
		if k < len(a) {
			x = debOrder(a[k])
		}
		if k < len(b) {
			y = debOrder(b[k])
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

// debOrder is go-deb-version's order, applied as it is to each byte: letters (of Latin-1, as a
// byte read as a rune is) sort first, by value, a tilde before anything, then the rest after.
func debOrder(c byte) int {
	if unicode.IsLetter(rune(c)) {
		return int(c)
	}
	if c == '~' {
		return -1
	}
	return int(c) + 256
}
