// Package vulndb keeps Trivy's vulnerability DB current: it downloads the DB's OCI artifact,
// checks it by manifest digest so that an unchanged DB costs one small request, verifies a new one
// and swaps it in under a lock that matches wait on, keeping the old DB whenever anything fails.
// For air-gapped clusters it serves a local DB and never downloads.
package vulndb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/authn"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/imageguard/imageguard/internal/durable"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
)

// DefaultRepositories are the public vulnerability DB repositories, tried in order.
var DefaultRepositories = VulnerabilityDB.DefaultRepositories

// DefaultCheckTimeout bounds one check for a new DB, its download included.
const DefaultCheckTimeout = 15 * time.Minute

// DefaultMaxBytes bounds the DB artifact, compressed and expanded (Trivy's DB expands to about
// 1 GiB today).
const DefaultMaxBytes = 2 << 30

// ErrNoDB is returned by View before any DB was loaded.
var ErrNoDB = errors.New("no vulnerability DB is loaded yet")

// Options configure a Manager.
type Options struct {
	// Artifact is the DB kept current; nil is VulnerabilityDB.
	Artifact *Artifact
	// OnDemand downloads nothing until Want is called, unless the cache holds a DB from an
	// earlier run: a cluster that never needs the DB never downloads it. Once loaded, the DB is
	// checked every CheckInterval as any other.
	OnDemand bool
	// WantRetry is how soon after a failed check a Want asks again while no DB is loaded,
	// doubling with each failure up to CheckInterval; 0 means a minute.
	WantRetry time.Duration
	// Repositories of the DB artifact, tried in order.
	Repositories []string
	// CheckInterval is how often the repositories are checked for a new DB.
	CheckInterval time.Duration
	// CheckTimeout bounds one check, a download included; 0 means DefaultCheckTimeout.
	CheckTimeout time.Duration
	// LocalPath is a folder holding the DB file (trivy.db, trivy-java.db) and metadata.json;
	// when set the Manager serves it and never downloads.
	LocalPath string
	// CacheDir holds the downloaded DB (under the artifact's Folder), so a restart serves it at
	// once.
	CacheDir string
	// Registry reaches the repositories; Keychain has their credentials (nil: anonymous).
	Registry *registry.Client
	Keychain authn.Keychain
	// MaxBytes bounds the compressed and the expanded DB; 0 means DefaultMaxBytes, negative no
	// bound. The cache holds two DBs during a swap.
	MaxBytes int64
	// Log receives what the Manager does; it never holds credentials.
	Log logr.Logger
	// Clock stamps checks and downloads (State); nil is the real clock.
	Clock clock.PassiveClock
}

// State is what the Manager knows of its DB and of its last check, for the DB's status object.
type State struct {
	// Info identifies the DB in use; Loaded is false before any DB was loaded.
	Info   scanner.DBInfo
	Loaded bool
	// Source is the repository the DB in use came from, or the local folder.
	Source string
	// NextUpdate is when the DB's builders expect the next one (its metadata).
	NextUpdate time.Time
	// DownloadedAt is when the DB in use was downloaded (or loaded, for a local DB).
	DownloadedAt time.Time
	// LastCheck is when the last check (or load) ended; LastErr why it failed, nil on success.
	LastCheck time.Time
	LastErr   error
}

// Manager keeps one DB (its Artifact) current; for the vulnerability DB it owns Trivy's
// process-global DB. It implements scanner.DB, scanner.JavaDB and manager.Runnable.
type Manager struct {
	opts Options
	art  *Artifact
	// wanted is signalled by Want.
	wanted chan struct{}

	// mu is held for reading while the DB is read (View, ViewDir: a Java DB during a whole
	// analysis) and for writing while it is swapped; nothing else waits on it.
	mu   sync.RWMutex
	info *scanner.DBInfo
	// cur is info, readable while a swap waits for the readers (Info, Loaded, State).
	cur atomic.Pointer[scanner.DBInfo]

	// stMu guards what State says of the DB in use and of the last check.
	stMu         sync.Mutex
	lastErr      error
	source       string
	nextUpdate   time.Time
	downloadedAt time.Time
	lastCheck    time.Time

	subMu       sync.Mutex
	subscribers []chan event.TypedGenericEvent[scanner.DBInfo]
	checked     []chan event.TypedGenericEvent[State]
}

// New returns a Manager for opts.
func New(opts Options) (*Manager, error) {
	art := opts.Artifact
	if art == nil {
		art = VulnerabilityDB
	}
	if opts.LocalPath == "" && len(opts.Repositories) == 0 {
		return nil, fmt.Errorf("vulndb: a %s repository or a local path is required", art.Name)
	}
	if opts.LocalPath == "" && opts.CacheDir == "" {
		return nil, fmt.Errorf("vulndb: a cache folder is required to download the %s", art.Name)
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = time.Hour
	}
	switch {
	case opts.MaxBytes == 0:
		opts.MaxBytes = DefaultMaxBytes
	case opts.MaxBytes < 0:
		opts.MaxBytes = math.MaxInt64
	}
	if opts.CheckTimeout <= 0 {
		opts.CheckTimeout = DefaultCheckTimeout
	}
	if opts.Registry == nil {
		opts.Registry = registry.NewClient(registry.Options{})
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.WantRetry <= 0 {
		opts.WantRetry = time.Minute
	}
	return &Manager{opts: opts, art: art, wanted: make(chan struct{}, 1)}, nil
}

// Artifact returns the DB this Manager keeps current.
func (m *Manager) Artifact() *Artifact { return m.art }

// Want asks an OnDemand Manager to download its DB now, if it has none; it returns at once.
func (m *Manager) Want() {
	select {
	case m.wanted <- struct{}{}:
	default:
	}
}

func (m *Manager) dirLocked() string {
	if m.opts.LocalPath != "" {
		return m.opts.LocalPath
	}
	return m.currentDir()
}

// ViewDir runs fn with the folder of the DB in use, which is not swapped until fn returns; with ""
// before any DB was loaded. The scanner analyses jar files under it (scanner.JavaDB).
func (m *Manager) ViewDir(fn func(dir string) error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.info == nil {
		return fn("")
	}
	return fn(m.dirLocked())
}

// Loaded reports whether a DB is loaded.
func (m *Manager) Loaded() bool {
	_, ok := m.Info()
	return ok
}

// folder is the artifact's folder in the cache.
func (m *Manager) folder() string { return filepath.Join(m.opts.CacheDir, m.art.Folder) }

// View runs fn with the current DB, which cannot be swapped until fn returns.
func (m *Manager) View(fn func(scanner.DBInfo) error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.info == nil {
		if err := m.LastError(); err != nil {
			return fmt.Errorf("%w: %v", ErrNoDB, err)
		}
		return ErrNoDB
	}
	return fn(*m.info)
}

// Info returns the current DB's identity, or false before any DB was loaded. It never waits for
// a swap.
func (m *Manager) Info() (scanner.DBInfo, bool) {
	if info := m.cur.Load(); info != nil {
		return *info, true
	}
	return scanner.DBInfo{}, false
}

// setInfo sets the DB in use; the caller holds mu for writing.
func (m *Manager) setInfo(info *scanner.DBInfo) {
	m.info = info
	m.cur.Store(info)
}

// State returns what the Manager knows of its DB and of its last check. It never waits for a
// swap.
func (m *Manager) State() State {
	m.stMu.Lock()
	defer m.stMu.Unlock()
	info, loaded := m.Info()
	return State{Info: info, Loaded: loaded, Source: m.source, NextUpdate: m.nextUpdate, DownloadedAt: m.downloadedAt, LastCheck: m.lastCheck, LastErr: m.lastErr}
}

// Checked returns a channel that receives the State after each check or load, whatever its
// outcome, as controller-runtime's source.Channel reads. A slow reader misses intermediate
// states, never the latest.
func (m *Manager) Checked() <-chan event.TypedGenericEvent[State] {
	ch := make(chan event.TypedGenericEvent[State], 1)
	m.subMu.Lock()
	m.checked = append(m.checked, ch)
	m.subMu.Unlock()
	return ch
}

// checkEnded stamps the end of a check or load and tells the Checked channels.
func (m *Manager) checkEnded() {
	m.stMu.Lock()
	m.lastCheck = m.opts.Clock.Now()
	m.stMu.Unlock()
	st := m.State()
	m.subMu.Lock()
	defer m.subMu.Unlock()
	for _, ch := range m.checked {
		select {
		case <-ch:
		default:
		}
		ch <- event.TypedGenericEvent[State]{Object: st}
	}
}

// LastError returns the error of the last failed check or load, nil after a success.
func (m *Manager) LastError() error {
	m.stMu.Lock()
	defer m.stMu.Unlock()
	return m.lastErr
}

// Subscribe returns a channel that receives the new DB's identity after each swap, as the event
// controller-runtime's source.Channel reads. A slow reader misses intermediate swaps, never the
// latest.
func (m *Manager) Subscribe() <-chan event.TypedGenericEvent[scanner.DBInfo] {
	ch := make(chan event.TypedGenericEvent[scanner.DBInfo], 1)
	m.subMu.Lock()
	m.subscribers = append(m.subscribers, ch)
	m.subMu.Unlock()
	return ch
}

func (m *Manager) notify(info scanner.DBInfo) {
	m.subMu.Lock()
	defer m.subMu.Unlock()
	for _, ch := range m.subscribers {
		select {
		case <-ch: // drop the stale notification
		default:
		}
		ch <- event.TypedGenericEvent[scanner.DBInfo]{Object: info}
	}
}

// NeedLeaderElection is false: every replica matches against its own copy of the DB.
func (m *Manager) NeedLeaderElection() bool { return false }

// Start loads the DB and, unless it is local, checks for a new one every CheckInterval (with
// jitter) until ctx ends. A failed check is logged and retried; the old DB keeps serving.
func (m *Manager) Start(ctx context.Context) error {
	log := m.opts.Log
	if m.opts.LocalPath != "" {
		if err := m.LoadLocal(); err != nil {
			return err
		}
		<-ctx.Done()
		return m.Close()
	}
	m.openCache()
	if _, loaded := m.Info(); m.opts.OnDemand && !loaded {
		m.opts.Log.Info("Not downloading the "+m.art.Name+" until an image needs it", "repositories", m.opts.Repositories)
		select {
		case <-ctx.Done():
			return m.Close()
		case <-m.wanted:
		}
	}
	failures := 0
	for {
		cctx, cancel := context.WithTimeout(ctx, m.opts.CheckTimeout)
		if _, err := m.Check(cctx); err != nil && ctx.Err() == nil {
			log.Error(err, "Checking for a new "+m.art.Name+" failed; the current one keeps serving", "artifact", m.art.Name)
			failures++
		} else {
			failures = 0
		}
		cancel()
		checked := time.Now()
		// A wanted DB that cannot be had is asked for again after WantRetry, doubling with each
		// failure up to CheckInterval: a mirror that fails after the transfer is not downloaded
		// from every minute.
		retry := min(m.opts.WantRetry<<min(max(failures-1, 0), 16), m.opts.CheckInterval)
		// Jitter spreads the checks of many clusters behind one mirror.
		wait := m.opts.CheckInterval + time.Duration(rand.Int64N(int64(m.opts.CheckInterval/10)+1))
	waiting:
		for {
			// While no DB is loaded, an image that needs it asks again, at most every WantRetry.
			var wanted <-chan struct{}
			if !m.Loaded() {
				wanted = m.wanted
			}
			select {
			case <-ctx.Done():
				return m.Close()
			case <-time.After(wait):
				break waiting
			case <-wanted:
				if early := retry - time.Since(checked); early > 0 {
					wait = min(wait, early)
					continue
				}
				break waiting
			}
		}
	}
}

// openCache cleans what an interrupted download or swap left and serves the DB a previous run
// downloaded, if any.
func (m *Manager) openCache() {
	if err := m.cleanLeftovers(); err != nil {
		m.opts.Log.Error(err, "Cleaning what an interrupted download or swap left in the cache")
	}
	if err := m.loadCached(); err != nil {
		m.opts.Log.Info("No usable downloaded "+m.art.Name+" in the cache", "reason", err.Error())
	}
}

// Open loads the DB once, for a one-shot use (imageguard scan): the local DB, or the one a
// previous run kept in the cache, checked against the repositories (one manifest request when it
// is unchanged; a download otherwise). When the check fails but a kept DB was loaded, that one
// serves and LastError says why; Open fails only when no DB could be loaded.
func (m *Manager) Open(ctx context.Context) error {
	if m.opts.LocalPath != "" {
		return m.LoadLocal()
	}
	m.openCache()
	cctx, cancel := context.WithTimeout(ctx, m.opts.CheckTimeout)
	defer cancel()
	_, err := m.Check(cctx)
	if _, ok := m.Info(); ok {
		return nil
	}
	return err
}

// Close closes the DB; View fails afterwards until the next load.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setInfo(nil)
	if m.art.close == nil {
		return nil
	}
	return m.art.close()
}

func (m *Manager) setErr(err error) error {
	m.stMu.Lock()
	m.lastErr = err
	m.stMu.Unlock()
	return err
}

// DownloadCrashLimit is how many downloads of one DB digest may die with the process before it
// is skipped for DownloadRetryAfter (the DB in use keeps serving).
const (
	DownloadCrashLimit = 2
	DownloadRetryAfter = 24 * time.Hour
)

// beginDownload marks digest's download (a scanner.CrashMark) and returns what ends it. It
// refuses a digest whose downloads died with the process DownloadCrashLimit times in the last
// DownloadRetryAfter.
func (m *Manager) beginDownload(digest string) (func(), error) {
	// One mark per digest, so that another repository's DB does not erase this one's history.
	name, err := scanner.DigestFileName(digest)
	if err != nil {
		return nil, fmt.Errorf("the %s artifact: %w", m.art.Name, err)
	}
	p := filepath.Join(m.folder(), "downloading-"+name)
	// A missing or unreadable mark is no mark.
	prev, _ := scanner.ReadCrashMark(p)
	now := time.Now()
	if until, refused := prev.RefusedUntil(DownloadCrashLimit, DownloadRetryAfter, now); refused {
		return nil, &registry.Error{Kind: registry.KindAnalysisCrashed, RetryAfter: until.Sub(now),
			Err: fmt.Errorf("downloading or opening the %s %s stopped the controller %d times; it is tried again after %s",
				m.art.Name, digest, prev.Attempts, until.UTC().Format(time.RFC3339))}
	}
	if err := scanner.WriteCrashMark(p, scanner.CrashMark{Attempts: prev.Attempts + 1, LastStart: now.UTC()}); err != nil {
		return nil, err
	}
	return func() { _ = durable.Remove(p) }, nil
}

// currentDir is where the downloaded DB in use lives.
func (m *Manager) currentDir() string { return filepath.Join(m.folder(), "current") }

// LoadLocal loads the DB of LocalPath.
func (m *Manager) LoadLocal() error {
	defer m.checkEnded()
	meta, err := verifyDir(m.art, m.opts.LocalPath)
	if err != nil {
		return m.setErr(fmt.Errorf("the local %s at %s: %w", m.art.Name, m.opts.LocalPath, err))
	}
	digest, err := m.localDigest()
	if err != nil {
		return m.setErr(err)
	}
	return m.swap(m.opts.LocalPath, "", scanner.DBInfo{UpdatedAt: meta.UpdatedAt, Digest: digest},
		origin{source: m.opts.LocalPath, nextUpdate: meta.NextUpdate, downloadedAt: m.opts.Clock.Now()})
}

// origin is where a DB being swapped in came from, for State.
type origin struct {
	source       string
	nextUpdate   time.Time
	downloadedAt time.Time
}

// cleanLeftovers removes what a process that died during a download or a swap left under db/:
// download folders, and the old DB moved aside, which is put back when the new one never made
// it into place or does not verify. Only one process writes the cache (the chart refuses a
// shared volume), so nothing here is another's work in progress.
func (m *Manager) cleanLeftovers() error {
	root := m.folder()
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".download-") {
			m.opts.Log.Info("Removing an interrupted "+m.art.Name+" download", "folder", e.Name())
			errs = append(errs, os.RemoveAll(filepath.Join(root, e.Name())))
		}
	}
	current := m.currentDir()
	old := current + ".old"
	if _, err := os.Stat(old); err == nil {
		if _, cerr := verifyDir(m.art, current); cerr != nil {
			m.opts.Log.Info("Putting back the DB an interrupted swap moved aside", "reason", cerr.Error())
			errs = append(errs, os.RemoveAll(current), durable.Rename(old, current))
		} else {
			errs = append(errs, os.RemoveAll(old))
		}
	}
	errs = append(errs, durable.SyncDir(root))
	return errors.Join(errs...)
}

// loadCached serves the DB a previous run downloaded.
func (m *Manager) loadCached() error {
	dir := m.currentDir()
	meta, err := verifyDir(m.art, dir)
	if err != nil {
		return err
	}
	digestPath := filepath.Join(dir, digestFile)
	digest, err := os.ReadFile(digestPath)
	if err != nil {
		return err
	}
	o := origin{nextUpdate: meta.NextUpdate}
	// The digest file is written once, when the DB is downloaded; the source beside it.
	if fi, err := os.Stat(digestPath); err == nil {
		o.downloadedAt = fi.ModTime()
	}
	if src, err := os.ReadFile(filepath.Join(dir, sourceFile)); err == nil {
		o.source = strings.TrimSpace(string(src))
	}
	return m.swap(dir, "", scanner.DBInfo{UpdatedAt: meta.UpdatedAt, Digest: strings.TrimSpace(string(digest))}, o)
}

// Check asks each repository in turn for the DB artifact's digest and, when it differs from the
// DB in use, downloads, verifies and swaps in the new DB. It reports whether a swap happened.
func (m *Manager) Check(ctx context.Context) (bool, error) {
	defer m.checkEnded()
	var errs []error
	for _, repo := range m.opts.Repositories {
		swapped, err := m.checkRepository(ctx, repo)
		if err == nil {
			_ = m.setErr(nil)
			return swapped, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", repo, err))
		if ctx.Err() != nil {
			break
		}
	}
	return false, m.setErr(errors.Join(errs...))
}

func (m *Manager) checkRepository(ctx context.Context, repo string) (bool, error) {
	digest, err := m.opts.Registry.ResolveDigest(ctx, repo, m.opts.Keychain)
	if err != nil {
		return false, err
	}
	if info, ok := m.Info(); ok && info.Digest == digest {
		return false, nil
	}
	if err := os.MkdirAll(m.folder(), 0o750); err != nil {
		return false, err
	}
	// Marked first, so that a DB whose download or opening takes the process down is not
	// downloaded again at every start.
	end, err := m.beginDownload(digest)
	if err != nil {
		return false, err
	}
	defer end()
	staging, err := os.MkdirTemp(m.folder(), ".download-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(staging)
	if err := m.download(ctx, repo, digest, staging); err != nil {
		return false, err
	}
	meta, err := verifyDir(m.art, staging)
	if err != nil {
		return false, fmt.Errorf("the downloaded %s %s: %w", m.art.Name, digest, err)
	}
	// Every file and the folder are on disk before the folder is renamed into place.
	if err := durable.WriteFile(filepath.Join(staging, digestFile), []byte(digest+"\n"), 0o640); err != nil {
		return false, err
	}
	if err := durable.WriteFile(filepath.Join(staging, sourceFile), []byte(repo+"\n"), 0o640); err != nil {
		return false, err
	}
	o := origin{source: repo, nextUpdate: meta.NextUpdate, downloadedAt: m.opts.Clock.Now()}
	if err := m.swap(staging, m.currentDir(), scanner.DBInfo{UpdatedAt: meta.UpdatedAt, Digest: digest}, o); err != nil {
		return false, err
	}
	m.opts.Log.Info("DB updated", "artifact", m.art.Name, "repository", repo, "digest", digest, "updatedAt", meta.UpdatedAt)
	return true, nil
}

// swap makes the DB in src current. With dst set, src is moved there first (the old DB at dst is
// kept aside until the new one opened). Matches wait on the lock while the DB is swapped.
func (m *Manager) swap(src, dst string, info scanner.DBInfo, o origin) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.art.close != nil {
		if err := m.art.close(); err != nil {
			return err
		}
	}
	dir := src
	var old string
	if dst != "" {
		if _, err := os.Stat(dst); err == nil {
			old = dst + ".old"
			_ = os.RemoveAll(old)
			if err := durable.Rename(dst, old); err != nil {
				return m.reopenLocked(fmt.Errorf("moving the old DB aside: %w", err))
			}
		}
		if err := durable.Rename(src, dst); err != nil {
			m.restoreLocked(old, dst)
			return m.reopenLocked(fmt.Errorf("moving the new DB into place: %w", err))
		}
		dir = dst
	}
	if err := m.openLocked(dir); err != nil {
		if dst != "" {
			_ = os.RemoveAll(dst)
			m.restoreLocked(old, dst)
		}
		return m.reopenLocked(fmt.Errorf("opening the new DB: %w", err))
	}
	if old != "" {
		_ = os.RemoveAll(old)
	}
	// The DB and what State says of it change together.
	m.stMu.Lock()
	m.setInfo(&info)
	m.lastErr = nil
	m.source, m.nextUpdate, m.downloadedAt = o.source, o.nextUpdate, o.downloadedAt
	m.stMu.Unlock()
	m.notify(info)
	return nil
}

func (m *Manager) restoreLocked(old, dst string) {
	if old != "" {
		_ = durable.Rename(old, dst)
	}
}

// reopenLocked reopens the DB that was serving before a failed swap and returns cause.
func (m *Manager) reopenLocked(cause error) error {
	_ = m.setErr(cause)
	if m.info == nil {
		return cause
	}
	if err := m.openLocked(m.dirLocked()); err != nil {
		m.setInfo(nil)
		return errors.Join(cause, fmt.Errorf("reopening the previous %s: %w", m.art.Name, err))
	}
	return cause
}

// openLocked opens the DB in dir as the artifact's Trivy DB, if it has one to open.
func (m *Manager) openLocked(dir string) error {
	if m.art.open == nil {
		return nil
	}
	return m.art.open(dir)
}

// HashedFiles counts the DB files this process hashed to learn their digest (local DBs whose
// identity was not kept), for tests.
var HashedFiles atomic.Int64

// localIdentity is what establishes a local DB's identity cheaply: the DB file's size and
// modification time and the metadata's content; its digest is kept beside it in the cache.
type localIdentity struct {
	Path     string `json:"path"`
	Size     int64  `json:"size"`
	ModTime  int64  `json:"modTimeNanos"`
	Metadata string `json:"metadataSHA256"`
	Digest   string `json:"digest"`
}

// localDigest returns the digest of the local DB's file: the one kept in the cache when the file's
// size, modification time and metadata are those it was computed for, else hashed (and kept).
// Hashing a DB of a gigabyte takes seconds; a stat and a small read do not.
func (m *Manager) localDigest() (string, error) {
	path := filepath.Join(m.opts.LocalPath, m.art.File)
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	meta, err := os.ReadFile(filepath.Join(m.opts.LocalPath, metadataFile))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(meta)
	id := localIdentity{Path: path, Size: fi.Size(), ModTime: fi.ModTime().UnixNano(), Metadata: hex.EncodeToString(sum[:])}
	var kept string
	if m.opts.CacheDir != "" {
		kept = filepath.Join(m.folder(), "local-identity.json")
		var prev localIdentity
		if raw, err := os.ReadFile(kept); err == nil && json.Unmarshal(raw, &prev) == nil {
			want := prev
			want.Digest = ""
			if want == id && strings.HasPrefix(prev.Digest, "sha256:") {
				return prev.Digest, nil
			}
		}
	}
	HashedFiles.Add(1)
	digest, err := fileDigest(path)
	if err != nil {
		return "", err
	}
	if kept != "" {
		id.Digest = digest
		// Best effort: a cache that cannot keep it only costs the next run a hash.
		if raw, err := json.Marshal(id); err == nil && os.MkdirAll(filepath.Dir(kept), 0o750) == nil {
			_ = durable.WriteFile(kept, raw, 0o640)
		}
	}
	return digest, nil
}
