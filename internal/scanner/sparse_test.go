package scanner

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/registry"
)

// ustarHeader returns a 512-byte ustar header, written by hand: archive/tar refuses to write the
// PAX headers of a sparse file.
func ustarHeader(name string, typeflag byte, size int) []byte {
	h := make([]byte, 512)
	copy(h[0:], name)
	copy(h[100:], "0000644\x00")
	copy(h[108:], "0000000\x00")
	copy(h[116:], "0000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", size))
	copy(h[136:], "00000000000\x00")
	h[156] = typeflag
	copy(h[257:], "ustar\x0000")
	copy(h[148:], "        ")
	sum := 0
	for _, b := range h {
		sum += int(b)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func padded(b []byte) []byte {
	return append(b, make([]byte, (512-len(b)%512)%512)...)
}

// paxRecord encodes one PAX record: its length counts itself.
func paxRecord(key, value string) string {
	rest := " " + key + "=" + value + "\n"
	for n := len(rest) + 1; ; n++ {
		if len(fmt.Sprint(n))+len(rest) == n {
			return fmt.Sprint(n) + rest
		}
	}
}

// TestASparseFileIsRefused checks that a sparse file declaring 512 GiB in a 3 KB layer is refused
// within its first MiB, not expanded.
func TestASparseFileIsRefused(t *testing.T) {
	for _, size := range []int64{1 << 30, 512 << 30} {
		g := NewWithT(t)
		records := paxRecord("GNU.sparse.size", fmt.Sprint(size)) + paxRecord("GNU.sparse.numblocks", "1") + paxRecord("GNU.sparse.map", "0,1")
		var archive bytes.Buffer
		archive.Write(ustarHeader("PaxHeaders/hole", 'x', len(records)))
		archive.Write(padded([]byte(records)))
		archive.Write(ustarHeader("hole", '0', 1))
		archive.Write(padded([]byte("a")))
		archive.Write(make([]byte, 1024))
		raw := archive.Bytes()
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
		g.Expect(err).NotTo(HaveOccurred())
		start := time.Now()
		err = checkLayer(context.Background(), layer, v1.Hash{Algorithm: "sha256", Hex: "00"}, v1.Hash{Algorithm: "sha256", Hex: "00"}, DefaultLimits, &packageBudget{})
		g.Expect(registry.KindOf(err)).To(Equal(registry.KindUnsupported), "%v", err)
		g.Expect(err).To(MatchError(ContainSubstring("sparse")), "%d bytes", size)
		t.Logf("%d bytes: refused in %s: %v", size, time.Since(start), err)
	}
}

// TestStreamPaidCatchesContentNotInTheStream checks the guard behind the sparse check: content
// more than a MiB ahead of the stream is refused.
func TestStreamPaidCatchesContentNotInTheStream(t *testing.T) {
	g := NewWithT(t)
	lr := &limitedReader{r: bytes.NewReader(make([]byte, 10))}
	paid := &streamPaid{stream: lr, start: 0}
	_, err := paid.Write(make([]byte, 1<<20))
	g.Expect(err).NotTo(HaveOccurred())
	_, err = paid.Write(make([]byte, 1))
	g.Expect(err).To(MatchError(errSparse))
}
