package scanner

import (
	"unicode"
	"unicode/utf8"

	apkversion "github.com/knqyf263/go-apk-version"
)

// The apk version comparison Trivy's Alpine detector uses (github.com/knqyf263/go-apk-version),
// reading the string in place. The library reads each version through a new bufio.Reader, that is a
// 4 KiB buffer for every Valid and two for every Compare: 16 KiB of garbage per advisory, which was
// a third of a re-match. This is the same token machine over a string, with the bufio.Reader
// behaviours it relies on reproduced (an unread after a peek, a discard or a read at the end does
// nothing). TestAPKVersionEqualsLibrary and FuzzAPKVersion compare it with the library; strings
// longer than apkInPlaceMax, where the library's buffer size could matter, go to the library.

const apkInPlaceMax = 256

// apkValid is apkversion.Valid.
func apkValid(ver string) bool {
	if len(ver) > apkInPlaceMax {
		return apkversion.Valid(ver)
	}
	t := apkDigit
	v := apkReader{s: ver, lastRuneSize: -1}
	for t != apkEnd && t != apkInvalid {
		_, t = v.getToken(t)
	}
	return t == apkEnd
}

// apkCompare is apkversion.Version(a).Compare(apkversion.Version(b)): -1, 0 or +1.
func apkCompare(a, b string) int {
	if len(a) > apkInPlaceMax || len(b) > apkInPlaceMax {
		return apkversion.Version(a).Compare(apkversion.Version(b))
	}
	v1 := apkReader{s: a, lastRuneSize: -1}
	v2 := apkReader{s: b, lastRuneSize: -1}
	at, bt := apkDigit, apkDigit
	var av, bv int
	for at == bt && at != apkEnd && at != apkInvalid && av == bv {
		av, at = v1.getToken(at)
		bv, bt = v2.getToken(bt)
	}
	switch {
	case av < bv:
		return -1
	case av > bv:
		return 1
	case at == bt:
		return 0
	}
	// The leading components are equal: the longer version is greater unless what follows is a
	// pre-release suffix.
	if at == apkSuffix {
		if v, _ := v1.getToken(at); v < 0 {
			return -1
		}
	}
	if bt == apkSuffix {
		if v, _ := v2.getToken(bt); v < 0 {
			return 1
		}
	}
	switch {
	case at > bt:
		return -1
	case at < bt:
		return 1
	}
	return 0
}

// apkToken is the library's token kind; the order matters.
type apkToken int

const (
	apkInvalid apkToken = iota - 1
	apkDigitOrZero
	apkDigit
	apkLetter
	apkSuffix
	apkSuffixNo
	apkRevisionNo
	apkEnd
)

var (
	apkPreSuffixes  = [...]string{"alpha", "beta", "pre", "rc"}
	apkPostSuffixes = [...]string{"cvs", "svn", "git", "hg", "p"}
)

// apkReader is the part of bufio.Reader over a strings.Reader that the library uses.
type apkReader struct {
	s            string
	r            int
	lastRuneSize int // -1: nothing to unread
}

// readRune is bufio.Reader.ReadRune; ok is false at the end (the library's size 0, io.EOF).
func (v *apkReader) readRune() (r rune, ok bool) {
	v.lastRuneSize = -1
	if v.r >= len(v.s) {
		return 0, false
	}
	r, size := rune(v.s[v.r]), 1
	if r >= utf8.RuneSelf {
		r, size = utf8.DecodeRuneInString(v.s[v.r:])
	}
	v.r += size
	v.lastRuneSize = size
	return r, true
}

// unreadRune is bufio.Reader.UnreadRune, errors ignored as the library ignores them.
func (v *apkReader) unreadRune() {
	if v.lastRuneSize < 0 || v.r < v.lastRuneSize {
		return
	}
	v.r -= v.lastRuneSize
	v.lastRuneSize = -1
}

// consume is the library's Peek(len(p)) compared with p, then Discard(len(p)) when equal; a
// peek forgets the last rune read, as bufio's does.
func (v *apkReader) consume(p string) bool {
	v.lastRuneSize = -1
	if len(v.s)-v.r < len(p) || v.s[v.r:v.r+len(p)] != p {
		return false
	}
	v.r += len(p)
	return true
}

// atEnd is the library's Peek(1) returning io.EOF.
func (v *apkReader) atEnd() bool {
	v.lastRuneSize = -1
	return v.r >= len(v.s)
}

func (v *apkReader) nextToken(t apkToken) apkToken {
	n := apkInvalid
	r, ok := v.readRune()
	if !ok {
		n = apkEnd
	}
	switch {
	case (t == apkDigit || t == apkDigitOrZero) && unicode.IsLower(r):
		n = apkLetter
	case t == apkLetter && unicode.IsDigit(r):
		n = apkDigit
	case t == apkSuffix && unicode.IsDigit(r):
		n = apkSuffixNo
	default:
		switch r {
		case '.':
			n = apkDigitOrZero
		case '_':
			n = apkSuffix
		case '-':
			if _, ok := v.readRune(); ok {
				n = apkRevisionNo
			} else {
				n = apkInvalid
			}
		}
	}
	if n == apkEnd || n == apkLetter || n == apkDigit || n == apkSuffixNo {
		v.unreadRune()
	}
	if n < t {
		switch {
		case n == apkDigitOrZero && t == apkDigit:
			return n
		case n == apkSuffix && t == apkSuffixNo:
			return n
		case n == apkDigit && t == apkLetter:
			return n
		default:
			return apkInvalid
		}
	}
	return n
}

func (v *apkReader) getToken(t apkToken) (int, apkToken) {
	nt := apkInvalid
	var value int
	r, _ := v.readRune()
	switch t {
	case apkDigitOrZero:
		// Leading zeros get a special treatment.
		if r == '0' {
			for {
				value--
				r, ok := v.readRune()
				if !ok {
					break
				}
				if r != '0' {
					v.unreadRune()
					break
				}
			}
			nt = apkDigit
			break
		}
		fallthrough
	case apkDigit, apkSuffixNo, apkRevisionNo:
		for unicode.IsDigit(r) {
			value *= 10
			value += int(r - '0')
			var ok bool
			if r, ok = v.readRune(); !ok {
				break
			}
		}
		v.unreadRune()
	case apkLetter:
		value = int(r)
	case apkSuffix:
		v.unreadRune()
		for i, s := range apkPreSuffixes {
			if v.consume(s) {
				value = i - len(apkPreSuffixes)
				break
			}
		}
		if value != 0 {
			break
		}
		value = -1
		for i, s := range apkPostSuffixes {
			if v.consume(s) {
				value = i
				break
			}
		}
		if value >= 0 {
			break
		}
		return -1, apkInvalid // an unknown suffix
	default:
		return -1, apkInvalid
	}
	switch {
	case v.atEnd():
		t = apkEnd
	case nt != apkInvalid:
		t = nt
	default:
		t = v.nextToken(t)
	}
	return value, t
}
