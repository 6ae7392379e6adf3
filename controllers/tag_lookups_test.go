package controllers

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestTagLookupsNeverWaitOnTheRegistry(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	release := make(chan struct{})
	var calls atomic.Int32
	answer := atomic.Value{}
	answer.Store("sha256:1")
	l := newTagLookups(2, func(ctx context.Context, _ string, _ *corev1.PodSpec, image string) (string, error) {
		calls.Add(1)
		if image == "down:1" {
			return "", errors.New("registry down")
		}
		<-release
		return answer.Load().(string), nil
	})
	l.Clock = clk
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}}

	// The first ask starts a lookup and returns at once; asking again starts no second one.
	for range 3 {
		if d, pending, err := l.Digest(pod, "app:1"); !pending || d != "" || err != nil {
			t.Fatalf("Digest = %q %v %v, want pending", d, pending, err)
		}
	}
	release <- struct{}{}
	ev := <-l.Events()
	if ev.Object.GetName() != "shop" {
		t.Fatalf("event for %q, want the namespace shop", ev.Object.GetName())
	}
	if d, pending, err := l.Digest(pod, "app:1"); d != "sha256:1" || pending || err != nil {
		t.Fatalf("Digest = %q %v %v, want sha256:1", d, pending, err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d lookups, want 1", n)
	}

	// Past its TTL the old digest is served while a new lookup runs.
	clk.SetTime(clk.Now().Add(l.TTL))
	answer.Store("sha256:2")
	if d, pending, _ := l.Digest(pod, "app:1"); d != "sha256:1" || pending {
		t.Fatalf("Digest = %q %v, want the stale sha256:1 while looking up again", d, pending)
	}
	release <- struct{}{}
	<-l.Events()
	if d, _, _ := l.Digest(pod, "app:1"); d != "sha256:2" {
		t.Fatalf("Digest = %q, want sha256:2", d)
	}

	// A failure is served for FailureTTL, then looked up again.
	_, _, _ = l.Digest(pod, "down:1")
	<-l.Events()
	before := calls.Load()
	if _, _, err := l.Digest(pod, "down:1"); err == nil {
		t.Fatal("want the lookup's failure")
	}
	if calls.Load() != before {
		t.Fatal("a recent failure was looked up again")
	}
	clk.SetTime(clk.Now().Add(l.FailureTTL))
	_, _, _ = l.Digest(pod, "down:1")
	<-l.Events()
	if calls.Load() != before+1 {
		t.Fatal("an old failure was not looked up again")
	}
}

func TestTagLookupsAreBounded(t *testing.T) {
	l := newTagLookups(4, func(context.Context, string, *corev1.PodSpec, string) (string, error) { return "sha256:1", nil })
	l.MaxEntries = 100
	for i := range 1000 {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns"}}
		_, _, _ = l.Digest(pod, "app:"+string(rune('a'+i%26))+string(rune('a'+i/26)))
		<-l.Events()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.entries); n > 100 {
		t.Fatalf("%d entries, want at most 100", n)
	}
}
