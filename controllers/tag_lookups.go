package controllers

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/imageguard/imageguard/internal/registry"
)

// tagLookups resolves the tags of pods the kubelet has reported no image ID for, in the
// background: a reconcile of the pod controller never waits on a registry, so a registry that
// hangs delays no other report, not even one of the same namespace. When a lookup ends, its
// namespace is queued again (through Events).
//
// An answer is served for TTL; after that the last digest keeps being served while a new lookup
// runs, so that a report is not marked unused because its tag is being looked up again. A
// failure is served for FailureTTL, then looked up again. At most `slots` lookups run at once;
// each ends within timeout. Entries are bounded by MaxEntries.
type tagLookups struct {
	TTL        time.Duration
	FailureTTL time.Duration
	Timeout    time.Duration
	MaxEntries int
	Clock      clock.PassiveClock

	// lookup resolves image with the credentials of spec's pull secrets in namespace.
	lookup func(ctx context.Context, namespace string, spec *corev1.PodSpec, image string) (string, error)

	slots  chan struct{}
	events chan event.GenericEvent

	mu      sync.Mutex
	entries map[tagKey]*tagEntry
}

type tagKey struct{ namespace, image string }

type tagEntry struct {
	digest  string    // the last digest found, possibly stale
	found   time.Time // when digest was found
	err     error     // the last lookup's failure, when it failed
	failed  time.Time
	running bool
}

func newTagLookups(slots int, lookup func(context.Context, string, *corev1.PodSpec, string) (string, error)) *tagLookups {
	return &tagLookups{
		TTL: 5 * time.Minute, FailureTTL: 30 * time.Second, Timeout: time.Minute, MaxEntries: registry.DefaultMaxDigests,
		Clock:  clock.RealClock{},
		lookup: lookup, slots: make(chan struct{}, slots), events: make(chan event.GenericEvent, 1024),
		entries: map[tagKey]*tagEntry{},
	}
}

// Events receives the namespace (as the object's name) of every lookup that ended.
func (l *tagLookups) Events() <-chan event.GenericEvent { return l.events }

// Digest returns the digest of image in pod's namespace: the one kept, or a lookup's failure.
// pending says no answer is known yet; a lookup then runs, and Events tells when it ended.
func (l *tagLookups) Digest(pod *corev1.Pod, image string) (digest string, pending bool, err error) {
	key := tagKey{pod.Namespace, image}
	now := l.Clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[key]
	if e == nil {
		l.sweep(now)
		e = &tagEntry{}
		l.entries[key] = e
	}
	freshDigest := e.digest != "" && now.Sub(e.found) < l.TTL
	recentFailure := e.err != nil && now.Sub(e.failed) < l.FailureTTL
	if !freshDigest && !recentFailure && !e.running {
		e.running = true
		// Only what the lookup reads: the pull secrets and the service account.
		spec := &corev1.PodSpec{ImagePullSecrets: pod.Spec.ImagePullSecrets, ServiceAccountName: pod.Spec.ServiceAccountName}
		go l.run(key, spec)
	}
	switch {
	case e.digest != "":
		return e.digest, false, nil
	case e.err != nil:
		return "", false, e.err
	default:
		return "", true, nil
	}
}

func (l *tagLookups) run(key tagKey, spec *corev1.PodSpec) {
	l.slots <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), l.Timeout)
	digest, err := l.lookup(ctx, key.namespace, spec, key.image)
	cancel()
	<-l.slots
	now := l.Clock.Now()
	l.mu.Lock()
	if e := l.entries[key]; e != nil {
		e.running = false
		if err != nil {
			e.err, e.failed = err, now
		} else {
			e.digest, e.found, e.err = digest, now, nil
		}
	}
	l.mu.Unlock()
	select {
	case l.events <- event.GenericEvent{Object: &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: key.namespace}}}:
	default: // full: the namespace's requeue while it has pending lookups catches up
	}
}

// sweep drops entries no longer served once the map reaches MaxEntries, then any idle entry if
// it is still full; the caller holds l.mu.
func (l *tagLookups) sweep(now time.Time) {
	if len(l.entries) < l.MaxEntries {
		return
	}
	for k, e := range l.entries {
		if !e.running && now.Sub(e.found) >= l.TTL && now.Sub(e.failed) >= l.FailureTTL {
			delete(l.entries, k)
		}
	}
	for k, e := range l.entries {
		if len(l.entries) < l.MaxEntries {
			return
		}
		if !e.running {
			delete(l.entries, k) // looked up again when asked
		}
	}
}
