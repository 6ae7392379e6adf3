package scanner

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/registry"
)

var (
	digestA = "sha256:" + strings.Repeat("a", 64)
	digestB = "sha256:" + strings.Repeat("b", 64)
)

// TestCrashMarks drives the marks as successive processes would: each "crash" is a begin whose
// end never runs, followed by marks read from the same folder.
func TestCrashMarks(t *testing.T) {
	g := NewWithT(t)
	cache := t.TempDir()
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	start := func() *crashMarks {
		c, err := newCrashMarks(cache, time.Hour, 2)
		g.Expect(err).NotTo(HaveOccurred())
		c.now = func() time.Time { return now }
		return c
	}

	// An analysis that ends, whatever its result, leaves no mark.
	c := start()
	end, err := c.begin(context.Background(), digestB)
	g.Expect(err).NotTo(HaveOccurred())
	end()
	g.Expect(c.Crashes(digestB)).To(BeZero())

	// Two processes die during digestA's analysis.
	for i := 1; i <= CrashLimit; i++ {
		c = start()
		g.Expect(c.Crashes(digestA)).To(Equal(i - 1))
		_, err := c.begin(context.Background(), digestA)
		g.Expect(err).NotTo(HaveOccurred())
	}
	// The third start refuses it, saying when it is tried again, and writes nothing.
	c = start()
	_, err = c.begin(context.Background(), digestA)
	g.Expect(registry.KindOf(err)).To(Equal(registry.KindAnalysisCrashed))
	g.Expect(err).To(MatchError(ContainSubstring("stopped the controller 2 times")))
	wait, ok := registry.RetryAfter(err)
	g.Expect(ok).To(BeTrue())
	g.Expect(wait).To(Equal(time.Hour))
	g.Expect(c.Crashes(digestA)).To(Equal(CrashLimit))
	// Other digests are unaffected.
	end, err = c.begin(context.Background(), digestB)
	g.Expect(err).NotTo(HaveOccurred())
	end()

	// After the retry interval it is tried once more, and a success clears it.
	now = now.Add(time.Hour)
	end, err = c.begin(context.Background(), digestA)
	g.Expect(err).NotTo(HaveOccurred())
	end()
	g.Expect(c.Crashes(digestA)).To(BeZero())
}

// TestSuspectRunsAlone checks that a digest with a mark is analysed only when nothing else is, so
// that if it takes the process down again no innocent digest is marked with it.
func TestSuspectRunsAlone(t *testing.T) {
	g := NewWithT(t)
	cache := t.TempDir()
	c, err := newCrashMarks(cache, time.Hour, 2)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.begin(context.Background(), digestA) // the process "dies" here
	g.Expect(err).NotTo(HaveOccurred())

	c, err = newCrashMarks(cache, time.Hour, 2)
	g.Expect(err).NotTo(HaveOccurred())
	endB, err := c.begin(context.Background(), digestB)
	g.Expect(err).NotTo(HaveOccurred())
	started := make(chan func())
	go func() {
		end, _ := c.begin(context.Background(), digestA)
		started <- end
	}()
	g.Consistently(started, 200*time.Millisecond).ShouldNot(Receive())
	endB()
	var endA func()
	g.Eventually(started).Should(Receive(&endA))
	g.Expect(c.Crashes(digestA)).To(Equal(2)) // its own run is counted until it ends
	endA()
	g.Expect(c.Crashes(digestA)).To(BeZero())
}

// TestOrderlyShutdownIsNoCrash checks that analyses an orderly shutdown interrupts keep the marks
// they found, no more.
func TestOrderlyShutdownIsNoCrash(t *testing.T) {
	g := NewWithT(t)
	cache := t.TempDir()
	c, err := newCrashMarks(cache, time.Hour, 2)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.begin(context.Background(), digestA)
	g.Expect(err).NotTo(HaveOccurred())
	c.forgetInFlight()
	g.Expect(c.Crashes(digestA)).To(BeZero())
	// A stopping process starts no analysis.
	_, err = c.begin(context.Background(), digestB)
	g.Expect(err).To(MatchError(ContainSubstring("stopping")))
	g.Expect(c.Crashes(digestB)).To(BeZero())

	c, _ = newCrashMarks(cache, time.Hour, 2)
	_, _ = c.begin(context.Background(), digestA) // a crash
	c, _ = newCrashMarks(cache, time.Hour, 2)
	end, err := c.begin(context.Background(), digestA)
	g.Expect(err).NotTo(HaveOccurred())
	c.forgetInFlight()
	g.Expect(c.Crashes(digestA)).To(Equal(1))
	end() // the interrupted analysis ends later: the mark put back stays
	g.Expect(c.Crashes(digestA)).To(Equal(1))
}

// TestAStuckAnalysisCountsAsACrash checks that an analysis still running past its deadline keeps
// its mark on an orderly shutdown: a digest that hangs the analysis reaches AnalysisCrashed too.
func TestAStuckAnalysisCountsAsACrash(t *testing.T) {
	g := NewWithT(t)
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c, err := newCrashMarks(t.TempDir(), time.Hour, 2)
	g.Expect(err).NotTo(HaveOccurred())
	c.now = func() time.Time { return now }
	c.stuckAfter = 11 * time.Minute
	_, err = c.begin(context.Background(), digestA)
	g.Expect(err).NotTo(HaveOccurred())
	now = now.Add(12 * time.Minute)
	c.forgetInFlight()
	g.Expect(c.Crashes(digestA)).To(Equal(1))
}

func TestOutOfMemoryIsSeenAcrossWrites(t *testing.T) {
	g := NewWithT(t)
	for _, split := range []int{1, 5, 13, 40} {
		o := &outOfMemory{}
		out := "goroutine 1 [running]:\nfatal error: runtime: out of memory\n\nruntime stack:"
		for i := 0; i < len(out); i += split {
			_, _ = o.Write([]byte(out[i:min(i+split, len(out))]))
		}
		g.Expect(o.seen).To(BeTrue(), "split %d", split)
	}
	o := &outOfMemory{}
	_, _ = o.Write([]byte("analyze-worker: reading the request: EOF\n"))
	g.Expect(o.seen).To(BeFalse())
}
