package signature

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
)

// Verdict is the outcome of reading and verifying a digest's signatures against one authority set.
type Verdict struct {
	Verified bool
	// Reason (securityv1alpha1.ReasonSignature*, ReasonIdentityMismatch, ReasonTrustRootInvalid,
	// ReasonRegistryError) and Message say why none verified.
	Reason, Message string
	// Signers are, per authority that verified, who signed and where.
	Signers   []securityv1alpha1.Signer
	CheckedAt time.Time
	// material is the fingerprint of the keys and trust root it was made with.
	material string
	// readFailed says the keys or trust root could not be read (no answer), as opposed to an
	// answer that they are missing or invalid.
	readFailed bool
}

// Policy returns the verdict as a policy judges it.
func (v Verdict) Policy() policy.SignatureVerdict {
	return policy.SignatureVerdict{Verified: v.Verified, Reason: v.Reason, Message: v.Message, CheckedAt: v.CheckedAt, SignedBy: policy.SignerNames(v.Signers)}
}

// transient reports whether the verdict may change without the image or the policy changing: the
// registry or the trust material failed.
func (v Verdict) transient() bool {
	return v.Reason == securityv1alpha1.ReasonRegistryError || v.Reason == securityv1alpha1.ReasonTrustRootInvalid
}

// Key is what a cached verdict is for: the namespace (whose pull secrets read the signatures), the
// digest and the authority set.
type Key struct{ Namespace, Digest, Authorities string }

// Defaults of a Verifier.
const (
	DefaultRecheckInterval = time.Hour
	DefaultTimeout         = 30 * time.Second
	// transientFor is how long a verdict of a failing registry or trust material is kept.
	transientFor = time.Minute
	// maxEntries bounds the cache; the least recently used half goes when it is full.
	maxEntries = 50_000
	// materialFor is how long the keys and trust root read for an authority set are reused.
	materialFor = 30 * time.Second
	// materialTimeout bounds one read of them, whoever waits for it.
	materialTimeout = 10 * time.Second
	// maxRuns bounds the verifications waiting for a slot or holding one, maxNamespaceRuns those
	// of one namespace (16 namespaces to fill it): past them, a Check answers with what is kept
	// (or nothing) at once.
	maxRuns          = 256
	maxNamespaceRuns = 16
	// materialStaleFor is how long the last keys and trust root read stand in for a read that
	// failed without an answer (the API server unavailable): a rotation or deletion in that
	// time takes effect once a read answers, or once this has passed (then nothing verifies).
	materialStaleFor = 5 * time.Minute
)

// Verifier reads and verifies signatures, keeping verdicts per Key: one verification per key at
// a time, each within its own deadline, whoever waits for it.
type Verifier struct {
	// Registry reaches registries (deadlines, size bounds, insecure hosts).
	Registry *registry.Client
	// Reader reads the policies' key Secrets and trust-root ConfigMaps and Secrets: uncached.
	Reader client.Reader
	Clock  clock.PassiveClock
	// RecheckInterval is how long a verdict stands before it is verified again; 0:
	// DefaultRecheckInterval.
	RecheckInterval time.Duration
	// Timeout bounds one verification (material, registry reads, crypto); 0: DefaultTimeout.
	Timeout time.Duration
	// MaxConcurrent bounds the verifications in flight (default 8); the others wait their turn.
	// One namespace has at most half of them, so that images of a slow or hostile registry in one
	// namespace cannot hold up the verifications of the others.
	MaxConcurrent int
	// OnVerdict, when set, is told of each verdict that differs from the one before for its key;
	// it must not block. Set it before the first Check.
	OnVerdict func(Key, Verdict)

	once      sync.Once
	sem       chan struct{}
	mu        sync.Mutex
	shares    map[string]*share
	runs      int // verifications started and not ended
	entries   map[Key]*entry
	materials map[string]cachedMaterial
	// materialReads makes one read of an authority set's material at a time.
	materialReads singleflight.Group
	reads         atomic.Int64
}

type entry struct {
	verdict Verdict
	has     bool
	// failedAt is when a verification last failed on the registry or the trust material's read
	// while the verdict kept was a verified one made with the same material: the verdict stands,
	// and is not verified again before transientFor.
	failedAt time.Time
	running  chan struct{} // closed when the verification in flight ends; nil when none
	lastUsed time.Time
}

// share is a namespace's part of the verification slots.
type share struct {
	slots chan struct{}
	users int // verifications started and not ended
}

type cachedMaterial struct {
	m   *material
	err error
	at  time.Time
}

func (v *Verifier) init() {
	v.once.Do(func() {
		if v.RecheckInterval <= 0 {
			v.RecheckInterval = DefaultRecheckInterval
		}
		if v.Timeout <= 0 {
			v.Timeout = DefaultTimeout
		}
		if v.MaxConcurrent <= 0 {
			v.MaxConcurrent = 8
		}
		if v.Clock == nil {
			v.Clock = clock.RealClock{}
		}
		v.sem = make(chan struct{}, v.MaxConcurrent)
		v.shares = map[string]*share{}
		v.entries = map[Key]*entry{}
		v.materials = map[string]cachedMaterial{}
	})
}

// Reads counts the verifications that read a registry.
func (v *Verifier) Reads() int64 { return v.reads.Load() }

// FreshFor is how long verdict stands: the recheck interval, a minute for a failing registry or
// trust material.
func (v *Verifier) FreshFor(verdict Verdict) time.Duration {
	v.init()
	if verdict.transient() {
		return min(v.RecheckInterval, transientFor)
	}
	return v.RecheckInterval
}

// Cached returns the verdict kept for k, and whether it is younger than maxAge (0: FreshFor).
func (v *Verifier) Cached(k Key, maxAge time.Duration) (Verdict, bool, bool) {
	v.init()
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.entries[k]
	if !ok || !e.has {
		return Verdict{}, false, false
	}
	e.lastUsed = v.Clock.Now()
	return e.verdict, true, v.standing(e, maxAge)
}

// standing reports whether e's verdict stands without a new verification: it is younger than
// maxAge (0: FreshFor), or a verification of it failed on the registry less than transientFor ago.
func (v *Verifier) standing(e *entry, maxAge time.Duration) bool {
	if since := v.Clock.Since(e.failedAt); !e.failedAt.IsZero() && since >= 0 && since < transientFor {
		return true
	}
	return v.fresh(e.verdict, maxAge)
}

func (v *Verifier) fresh(verdict Verdict, maxAge time.Duration) bool {
	age := v.Clock.Since(verdict.CheckedAt)
	if maxAge <= 0 || maxAge > v.FreshFor(verdict) {
		maxAge = v.FreshFor(verdict)
	}
	return age >= 0 && age < maxAge
}

// Check returns the verdict for k (of repo@k.Digest under a): the kept one when it stands
// (younger than maxAge, 0: FreshFor), else a new verification's, waited for until ctx ends. The
// verification goes on after ctx ends, within its own deadline, and its verdict is kept. When ctx
// ends first, or too many verifications are in flight, the kept verdict is returned however old
// (ok true), or none (ok false). A verdict made with other key or trust-root bytes than the
// current ones is never returned.
func (v *Verifier) Check(ctx context.Context, k Key, a *policy.SignatureAuthorities, repo string, keychain authn.Keychain, maxAge time.Duration) (Verdict, bool) {
	v.init()
	now := v.Clock.Now()
	v.mu.Lock()
	e, ok := v.entries[k]
	if !ok {
		if len(v.entries) >= maxEntries {
			v.evictLocked()
		}
		e = &entry{}
		v.entries[k] = e
	}
	e.lastUsed = now
	v.mu.Unlock()
	// A verdict made with other key or trust-root bytes (rotated, revoked, deleted) never
	// stands. Material not known before ctx ends changes nothing kept.
	c, known := v.material(ctx, a)
	current := ""
	if known && c.err == nil {
		current = c.m.fingerprint
	}
	v.mu.Lock()
	if known && e.has && e.verdict.material != current {
		e.has, e.verdict, e.failedAt = false, Verdict{}, time.Time{}
	}
	if !known {
		// The material is not known in time: a kept verdict may be of a revoked key, so only a
		// failed one (which can only refuse) is given.
		verdict, has := e.verdict, e.has && !e.verdict.Verified
		v.mu.Unlock()
		if !has {
			return Verdict{}, false
		}
		return verdict, true
	}
	if e.has && v.standing(e, maxAge) {
		verdict := e.verdict
		v.mu.Unlock()
		return verdict, true
	}
	if e.running == nil {
		sh := v.shares[k.Namespace]
		if sh == nil {
			sh = &share{slots: make(chan struct{}, max(1, v.MaxConcurrent/2))}
		}
		if v.runs >= maxRuns || sh.users >= maxNamespaceRuns {
			verdict, has := e.verdict, e.has
			v.mu.Unlock()
			return verdict, has
		}
		v.shares[k.Namespace] = sh
		sh.users++
		v.runs++
		e.running = make(chan struct{})
		go v.run(k, e, sh, a, repo, keychain)
	}
	running := e.running
	v.mu.Unlock()
	select {
	case <-running:
	case <-ctx.Done():
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if e.has && e.verdict.material != current {
		return Verdict{}, false // made with the material before the current one
	}
	return e.verdict, e.has
}

// run verifies k and keeps its verdict. A verification that got no slot in time keeps nothing; one
// that failed on the registry or the material's read keeps a verified verdict made with the same
// material (the digest's signatures cannot have stopped verifying but by the material changing).
func (v *Verifier) run(k Key, e *entry, sh *share, a *policy.SignatureAuthorities, repo string, keychain authn.Keychain) {
	wait, stop := context.WithTimeout(context.Background(), v.Timeout)
	got := v.acquire(wait, sh)
	stop()
	var verdict Verdict
	if got {
		// The verification's own deadline starts with its slot.
		ctx, cancel := context.WithTimeout(context.Background(), v.Timeout)
		verdict = v.safeVerify(ctx, a, repo, k.Digest, keychain)
		cancel()
		<-v.sem
		<-sh.slots
	}
	v.mu.Lock()
	if sh.users--; sh.users == 0 && v.shares[k.Namespace] == sh {
		delete(v.shares, k.Namespace)
	}
	v.runs--
	changed := false
	switch {
	case !got:
	case e.has && e.verdict.Verified && (verdict.readFailed ||
		verdict.Reason == securityv1alpha1.ReasonRegistryError && verdict.material == e.verdict.material):
		e.failedAt = verdict.CheckedAt
	default:
		changed = !e.has || !sameVerdict(e.verdict, verdict)
		e.verdict, e.has, e.failedAt = verdict, true, time.Time{}
	}
	close(e.running)
	e.running = nil
	if _, ok := v.entries[k]; !ok && len(v.entries) < maxEntries && e.has {
		v.entries[k] = e // evicted while it ran
	}
	v.mu.Unlock()
	if changed && v.OnVerdict != nil {
		v.OnVerdict(k, verdict)
	}
}

// acquire takes one of sh's slots, then one of all, before ctx ends.
func (v *Verifier) acquire(ctx context.Context, sh *share) bool {
	select {
	case sh.slots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	select {
	case v.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		<-sh.slots
		return false
	}
}

// safeVerify is Verify, a panic in the libraries (on bytes a registry served) turned into an
// invalid verdict: it runs outside any reconcile, whose recovery would not catch it.
func (v *Verifier) safeVerify(ctx context.Context, a *policy.SignatureAuthorities, repo, digest string, keychain authn.Keychain) (verdict Verdict) {
	defer func() {
		if r := recover(); r != nil {
			verdict = Verdict{Reason: securityv1alpha1.ReasonSignatureInvalid, CheckedAt: v.Clock.Now(),
				Message: truncate(fmt.Sprintf("verifying the signatures failed: %v", r))}
		}
	}()
	return v.Verify(ctx, a, repo, digest, keychain)
}

// sameVerdict compares verdicts but for when they were made.
func sameVerdict(a, b Verdict) bool {
	if a.Verified != b.Verified || a.Reason != b.Reason || a.Message != b.Message || len(a.Signers) != len(b.Signers) {
		return false
	}
	for i := range a.Signers {
		if a.Signers[i] != b.Signers[i] {
			return false
		}
	}
	return true
}

// evictLocked drops the least recently used half of the entries that are not running.
func (v *Verifier) evictLocked() {
	var cutoff time.Time
	times := make([]time.Time, 0, len(v.entries))
	for _, e := range v.entries {
		times = append(times, e.lastUsed)
	}
	if len(times) == 0 {
		return
	}
	slices.SortFunc(times, time.Time.Compare)
	cutoff = times[len(times)/2]
	for k, e := range v.entries {
		if e.running == nil && !e.lastUsed.After(cutoff) {
			delete(v.entries, k)
		}
	}
}

// Verify reads repo@digest's signatures with keychain and verifies them against a, without the
// cache.
func (v *Verifier) Verify(ctx context.Context, a *policy.SignatureAuthorities, repo, digest string, keychain authn.Keychain) Verdict {
	v.init()
	if v.Registry == nil {
		return Verdict{Reason: securityv1alpha1.ReasonRegistryError, Message: "no registry client", CheckedAt: v.Clock.Now()}
	}
	c, known := v.material(ctx, a)
	m, err := c.m, c.err
	if !known {
		err = fmt.Errorf("%w: %w: the keys and trust root were not read in time", errTrustRoot, errReadFailed)
	}
	if err != nil {
		return Verdict{Reason: securityv1alpha1.ReasonTrustRootInvalid, Message: truncate(err.Error()), CheckedAt: v.Clock.Now(),
			readFailed: errors.Is(err, errReadFailed)}
	}
	v.reads.Add(1)
	f := fetch(ctx, v.Registry, repo, digest, keychain)
	verdict := judge(m, f, digest, v.Clock.Now())
	verdict.material = m.fingerprint
	return verdict
}

// material returns a's keys and trust root, read at most every materialFor, one read at a time,
// on a deadline of its own: a caller whose ctx ends first gets known false, and the read goes
// on. A read that failed without an answer about the objects (the API server unavailable) gives
// what was read before, when there is something, and is not kept.
func (v *Verifier) material(ctx context.Context, a *policy.SignatureAuthorities) (cachedMaterial, bool) {
	now := v.Clock.Now()
	v.mu.Lock()
	c, ok := v.materials[a.ID]
	v.mu.Unlock()
	if ok && now.Sub(c.at) < materialFor && now.Sub(c.at) >= 0 {
		return c, true
	}
	ch := v.materialReads.DoChan(a.ID, func() (any, error) {
		rctx, cancel := context.WithTimeout(context.Background(), materialTimeout)
		defer cancel()
		m, err := safeReadMaterial(rctx, v.Reader, a)
		now := v.Clock.Now()
		v.mu.Lock()
		defer v.mu.Unlock()
		if errors.Is(err, errReadFailed) {
			if c, ok := v.materials[a.ID]; ok && c.err == nil && now.Sub(c.at) < materialStaleFor {
				return c, nil
			}
			return cachedMaterial{err: err, at: now}, nil
		}
		if len(v.materials) > 256 {
			for id, c := range v.materials {
				if now.Sub(c.at) >= materialFor {
					delete(v.materials, id)
				}
			}
			for len(v.materials) > 256 {
				// The one read longest ago goes: not all of them, so that the keys of the
				// policies still in use (and their stand-ins for failed reads) stay.
				oldest := ""
				for id, c := range v.materials {
					if oldest == "" || c.at.Before(v.materials[oldest].at) {
						oldest = id
					}
				}
				delete(v.materials, oldest)
			}
		}
		c := cachedMaterial{m: m, err: err, at: now}
		v.materials[a.ID] = c
		return c, nil
	})
	select {
	case r := <-ch:
		return r.Val.(cachedMaterial), true //nolint:forcetypeassert // the only type the function returns
	case <-ctx.Done():
		return cachedMaterial{}, false
	}
}

// safeReadMaterial is readMaterial, a panic in the libraries (on a trust root's bytes) turned into
// an error: it runs in a goroutine of its own, whose panic would end the process.
func safeReadMaterial(ctx context.Context, reader client.Reader, a *policy.SignatureAuthorities) (m *material, err error) {
	defer func() {
		if r := recover(); r != nil {
			m, err = nil, fmt.Errorf("%w: reading the keys and trust root failed: %v", errTrustRoot, r)
		}
	}()
	return readMaterial(ctx, reader, a)
}

// judge verifies what was found against m: verified when any candidate verifies against any
// authority; else the reason: a failed read (the signature that would verify may be what it did
// not read), an identity mismatch, an invalid signature, or none at all.
func judge(m *material, f found, digest string, now time.Time) Verdict {
	out := Verdict{CheckedAt: now}
	var mismatch, invalid error
	seen := map[securityv1alpha1.Signer]bool{}
	for _, c := range f.candidates {
		o := m.check(c, digest)
		for _, s := range o.signers {
			if !seen[s] && len(out.Signers) < 2*securityv1alpha1.MaxSignatureChecks {
				seen[s] = true
				out.Signers = append(out.Signers, s)
			}
		}
		if o.mismatch != nil {
			mismatch = o.mismatch
		}
		if o.invalid != nil {
			invalid = fmt.Errorf("%s: %w", c.where, o.invalid)
		}
	}
	switch {
	case len(out.Signers) > 0:
		out.Verified = true
		out.Message = fmt.Sprintf("%d signature(s) found, verified by %d authority(ies)", len(f.candidates), len(out.Signers))
	case f.readErr != nil:
		out.Reason = securityv1alpha1.ReasonRegistryError
		out.Message = "reading the signatures failed: " + f.readErr.Error()
		if len(f.candidates) > 0 {
			out.Message += fmt.Sprintf(" (%d other signature(s) read, none verifies)", len(f.candidates))
		}
	case mismatch != nil:
		out.Reason = securityv1alpha1.ReasonIdentityMismatch
		out.Message = mismatch.Error()
	case invalid != nil:
		out.Reason = securityv1alpha1.ReasonSignatureInvalid
		out.Message = fmt.Sprintf("%d signature(s) found, none verifies; last: %v", len(f.candidates), invalid)
	default:
		out.Reason = securityv1alpha1.ReasonSignatureMissing
		out.Message = "no signature: no cosign signature tag and no Sigstore bundle refers to " + digest
	}
	out.Message = truncate(out.Message)
	return out
}

// truncate bounds a message to what a status holds.
func truncate(s string) string {
	const limit = 1000
	if len(s) <= limit {
		return s
	}
	return strings.ToValidUTF8(s[:limit], "") + "..."
}
