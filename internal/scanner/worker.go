package scanner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/imageguard/imageguard/internal/registry"
)

// WorkerOptions run each analysis in a child process (`imageguard analyze-worker`), whose memory
// is watched and bounded: whatever an image makes Trivy's parsers allocate, the process that
// ends is the worker, and the analysis ends with UnsupportedImage naming the bound. The
// controller keeps running, and keeps answering admission.
type WorkerOptions struct {
	// Command runs a worker: the binary and its arguments; it reads a request on its standard
	// input and writes its answer on its standard output (RunWorker).
	Command []string
	// MemoryBytes bounds a worker's resident memory; past it the worker is killed.
	MemoryBytes int64
}

// workerRequest is what a worker reads: one analysis. Credentials travel here, on a pipe, never
// in arguments or the environment.
type workerRequest struct {
	Repository  string            `json:"repository"`
	Digest      string            `json:"digest"`
	Auth        *authn.AuthConfig `json:"auth,omitempty"`
	Registry    registry.Options  `json:"registry"`
	Limits      Limits            `json:"limits"`
	TempDir     string            `json:"tempDir"`
	Timeout     time.Duration     `json:"timeout"`
	MemoryBytes int64             `json:"memoryBytes"`
	// LayerDir and LayerMaxEntry give the layer cache's folder and the bound of one entry; empty:
	// no layer cache.
	LayerDir         string `json:"layerDir,omitempty"`
	LayerMaxEntry    int64  `json:"layerMaxEntry,omitempty"`
	LayerWriteBudget int64  `json:"layerWriteBudget,omitempty"`
	// AnalyzedAfter: layer cache entries made before it are not used.
	AnalyzedAfter time.Time `json:"analyzedAfter,omitzero"`
	// StartedAt is the analysis's start by the controller's clock: it stamps the entries written.
	StartedAt time.Time `json:"startedAt,omitzero"`
	// JavaDBDir is the folder of the Java DB the jar analyzer reads; empty: none.
	JavaDBDir string `json:"javaDBDir,omitempty"`
}

// workerAnswer is what a worker writes: an inventory or a typed error.
type workerAnswer struct {
	Inventory *Inventory   `json:"inventory,omitempty"`
	Error     *workerError `json:"error,omitempty"`
	// Layers is what the analysis did with the layer cache.
	Layers *LayerUse `json:"layers,omitempty"`
	// notStarted: the answer of no worker (it was never started).
	notStarted bool
}

type workerError struct {
	Kind       registry.Kind `json:"kind"`
	Message    string        `json:"message"`
	RetryAfter time.Duration `json:"retryAfter,omitempty"`
}

// maxWorkerRequestBytes bounds what a worker reads of its request.
const maxWorkerRequestBytes = 1 << 20

// RunWorker serves one analysis request read from in and writes the answer to out; it returns
// the process exit code.
func RunWorker(in io.Reader, out io.Writer) int {
	var req workerRequest
	if err := json.NewDecoder(io.LimitReader(in, maxWorkerRequestBytes)).Decode(&req); err != nil {
		fmt.Fprintf(os.Stderr, "analyze-worker: reading the request: %v\n", err)
		return 2
	}
	quietTrivyLogs()
	// If the container runs out of memory, the kernel is to take a worker, not the controller.
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("1000"), 0)
	if req.MemoryBytes > 0 {
		// A hard cap first; the collector works hard well before it is reached.
		if err := limitMemory(req.MemoryBytes); err != nil {
			fmt.Fprintf(os.Stderr, "analyze-worker: limiting memory: %v\n", err)
			return 2
		}
		debug.SetMemoryLimit(req.MemoryBytes * 8 / 10)
	}
	if n := fileSizeLimit(req.Limits); n > 0 {
		if err := limitFileSize(n); err != nil {
			fmt.Fprintf(os.Stderr, "analyze-worker: limiting file sizes: %v\n", err)
			return 2
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), req.Timeout)
	defer cancel()
	s := &Scanner{
		opts:     Options{TempDir: req.TempDir, Timeout: req.Timeout, Limits: req.Limits},
		registry: registry.NewClient(req.Registry), trivyVersion: TrivyVersion(),
		layerDir: layerCacheDir{dir: req.LayerDir, maxEntry: req.LayerMaxEntry, writeBudget: req.LayerWriteBudget, now: req.StartedAt},
	}
	ref := ImageRef{Repository: req.Repository, Digest: req.Digest, AnalyzedAfter: req.AnalyzedAfter}
	if req.Auth != nil {
		ref.Keychain = staticKeychain{authn.FromConfig(*req.Auth)}
	}
	inv, use, err := s.analyze(ctx, ref, nil, req.JavaDBDir)
	waitFileLimit()
	answer := workerAnswer{Inventory: inv, Layers: use}
	if err != nil {
		answer = workerAnswer{Error: &workerError{Kind: registry.KindOf(err), Message: err.Error()}, Layers: use}
		if wait, ok := registry.RetryAfter(err); ok {
			answer.Error.RetryAfter = wait
		}
	}
	if err := json.NewEncoder(out).Encode(&answer); err != nil {
		fmt.Fprintf(os.Stderr, "analyze-worker: writing the answer: %v\n", err)
		return 1
	}
	return 0
}

// staticKeychain answers every registry with one authenticator: a worker reaches one registry.
type staticKeychain struct{ auth authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }

// analyzeInWorker runs ref's analysis in a worker process. The LayerUse is nil when the worker
// gave no answer.
func (s *Scanner) analyzeInWorker(ctx context.Context, ref ImageRef, javaDir string) (*Inventory, *LayerUse, error) {
	inv, answer, err := s.runWorker(ctx, ref, javaDir)
	var use *LayerUse
	switch {
	case answer != nil && answer.Layers != nil:
		use = answer.Layers
	case answer != nil && (s.layerDir.dir == "" || answer.notStarted):
		// No layer cache, or no worker ran: nothing to learn.
		use = &LayerUse{}
	}
	// Otherwise nil: a worker that said nothing of the layer cache; the folder is read again.
	return inv, use, err
}

// runWorker runs ref's analysis in a worker process, and returns the worker's answer when it gave
// one.
func (s *Scanner) runWorker(ctx context.Context, ref ImageRef, javaDir string) (*Inventory, *workerAnswer, error) {
	w := s.opts.Worker
	// The worker's folder is made and removed here: a worker that is killed cleans nothing.
	dir, err := os.MkdirTemp(s.opts.TempDir, "worker-")
	if err != nil {
		return nil, &workerAnswer{notStarted: true}, err
	}
	defer os.RemoveAll(dir)
	req := workerRequest{
		Repository: ref.Repository, Digest: ref.Digest, Registry: s.registry.Options(), Limits: s.opts.Limits,
		TempDir: dir, Timeout: s.opts.Timeout, MemoryBytes: w.MemoryBytes,
		LayerDir: s.layerDir.dir, LayerMaxEntry: s.layerDir.maxEntry, LayerWriteBudget: s.layerDir.writeBudget,
		AnalyzedAfter: ref.AnalyzedAfter, StartedAt: s.opts.Clock.Now(), JavaDBDir: javaDir,
	}
	if ref.Keychain != nil {
		parsed, err := s.registry.ParseReference(ref.String())
		if err != nil {
			return nil, &workerAnswer{notStarted: true}, err
		}
		auth, err := ref.Keychain.Resolve(parsed.Context())
		if err != nil {
			return nil, &workerAnswer{notStarted: true}, registry.Classify(fmt.Errorf("credentials for %s: %w", parsed.Context().RegistryStr(), err))
		}
		cfg, err := authn.Authorization(ctx, auth)
		if err != nil {
			return nil, &workerAnswer{notStarted: true}, registry.Classify(fmt.Errorf("credentials for %s: %w", parsed.Context().RegistryStr(), err))
		}
		if *cfg != (authn.AuthConfig{}) {
			req.Auth = cfg
		}
	}
	stdin, err := json.Marshal(&req)
	if err != nil {
		return nil, &workerAnswer{notStarted: true}, err
	}
	// The worker's own deadline ends it first, with a typed error; this one is for a worker
	// that does not end.
	wctx, cancel := context.WithTimeout(ctx, s.opts.Timeout+15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(wctx, w.Command[0], w.Command[1:]...)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Env = workerEnv(dir)
	maxAnswer := s.opts.Limits.MaxInventoryBytes + 1<<20
	stdout := &cappedWriter{max: maxAnswer}
	stderr := &cappedWriter{max: 16 << 10, keepTail: true}
	oom := &outOfMemory{}
	cmd.Stdout, cmd.Stderr = stdout, io.MultiWriter(stderr, oom)
	cmd.WaitDelay = 5 * time.Second
	dieWithParent(cmd)

	// Pdeathsig follows the thread that started the child: it stays locked until the child ends.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return nil, &workerAnswer{notStarted: true}, fmt.Errorf("starting an analysis worker: %w", err)
	}
	var exceeded, diskExceeded atomic.Bool
	var peak atomic.Int64
	done := make(chan struct{})
	go watchMemory(cmd.Process, w.MemoryBytes, &exceeded, &peak, done)
	diskBudget := diskLimit(s.opts.Limits)
	go watchDisk(cmd.Process, dir, diskBudget, &diskExceeded, done)
	err = cmd.Wait()
	close(done)
	// At its cap the Go runtime fails in more than one way (out of memory, or a fault in the
	// runtime itself when a mapping is refused): a worker that dies by a Go fatal error (exit 2)
	// after using half its bound is taken as having hit it.
	nearCap := w.MemoryBytes > 0 && peak.Load() > w.MemoryBytes/2 && exitCode(err) == 2
	switch {
	case exceeded.Load(), err != nil && (oom.seen || nearCap):
		return nil, nil, registry.Errorf(registry.KindUnsupported, "the analysis of %s took more than %d bytes of memory, and was stopped (--analysis-memory-bytes)", ref, w.MemoryBytes)
	case exitCode(err) == exitFileTooLarge && strings.Contains(stderr.String(), fileTooLarge):
		return nil, nil, registry.Errorf(registry.KindUnsupported, "the analysis of %s wrote a file of more than %d bytes (a pulled layer, or one of Trivy's temporary files: --max-image-bytes, --max-temp-bytes), and was stopped", ref, fileSizeLimit(s.opts.Limits))
	case diskExceeded.Load():
		return nil, nil, registry.Errorf(registry.KindUnsupported, "the analysis of %s wrote more than %d bytes to disk (pulled layers and Trivy's temporary files: --max-image-bytes + --max-temp-bytes), and was stopped", ref, diskBudget)
	case err != nil && wctx.Err() != nil:
		return nil, nil, registry.Errorf(registry.KindTimeout, "the analysis of %s did not finish within its time limit", ref)
	case err != nil && killed(err):
		// Not by us, and not out of its own bound: the kernel's OOM killer may have chosen it for
		// another's excess. Retried, not blamed on the image.
		return nil, nil, registry.Errorf(registry.KindUnavailable, "the analysis worker of %s was killed (%v)", ref, err)
	case err != nil:
		return nil, nil, registry.Errorf(registry.KindUnsupported, "the analysis worker of %s failed (%v): %s", ref, err, failureLine(stderr.String()))
	}
	if stdout.truncated {
		return nil, nil, registry.Errorf(registry.KindUnsupported, "the image's inventory is more than %d bytes encoded (--max-inventory-bytes)", s.opts.Limits.MaxInventoryBytes)
	}
	var answer workerAnswer
	if err := json.Unmarshal(stdout.Bytes(), &answer); err != nil {
		return nil, nil, fmt.Errorf("reading the analysis worker's answer: %w", err)
	}
	if e := answer.Error; e != nil {
		kind := e.Kind
		if !registry.Known(kind) {
			kind = registry.KindUnavailable
		}
		return nil, &answer, &registry.Error{Kind: kind, RetryAfter: min(max(e.RetryAfter, 0), 24*time.Hour), Err: errors.New(bounded(e.Message, 4<<10))}
	}
	if answer.Inventory == nil || answer.Inventory.Digest != ref.Digest {
		return nil, &answer, errors.New("the analysis worker answered no inventory of the digest asked for")
	}
	return answer.Inventory, &answer, nil
}

// exitCode is the exit status err reports, or -1.
func exitCode(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	return -1
}

// killed reports whether err says the process ended by SIGKILL.
func killed(err error) bool {
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return false
	}
	ws, ok := exit.Sys().(interface{ Signal() syscall.Signal })
	return ok && ws.Signal() == syscall.SIGKILL
}

// workerEnv is the worker's environment: what reaching registries needs (proxies, CA files),
// and its own temporary folder; none of the controller's other variables.
func workerEnv(tmp string) []string {
	env := []string{"TMPDIR=" + tmp}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "PATH", "HOME", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "GODEBUG":
			env = append(env, kv)
		}
	}
	return env
}

// failureLine picks from a worker's output the line that says why it failed (a panic or a fatal
// error rather than the last frame of a stack), bounded and printable.
func failureLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	pick := lines[len(lines)-1]
	for _, l := range lines {
		if strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: ") || strings.HasPrefix(l, "analyze-worker: ") {
			pick = l
			break
		}
	}
	return bounded(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, pick), 512)
}

func bounded(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// outOfMemory notes whether the Go runtime's "runtime: out of memory" passed through it (it
// starts a long goroutine dump, so the tail of the output may not hold it).
type outOfMemory struct {
	last []byte
	seen bool
}

// outOfMemoryLines are how the Go runtime says it hit the worker's cap: "fatal error: runtime: out
// of memory", "fatal error: out of memory allocating heap arena metadata", "runtime: mmap: cannot
// allocate memory".
var outOfMemoryLines = [][]byte{[]byte("out of memory"), []byte("cannot allocate memory")}

func (o *outOfMemory) Write(p []byte) (int, error) {
	if !o.seen {
		joined := append(o.last, p...)
		for _, l := range outOfMemoryLines {
			o.seen = o.seen || bytes.Contains(joined, l)
		}
		o.last = append(o.last[:0], joined[max(0, len(joined)-32):]...)
	}
	return len(p), nil
}

// watchMemory kills p once its resident memory passes limit, until done is closed; peak is the
// highest it saw.
func watchMemory(p *os.Process, limit int64, exceeded *atomic.Bool, peak *atomic.Int64, done <-chan struct{}) {
	if limit <= 0 {
		return
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		rss, ok := residentBytes(p.Pid)
		if ok && rss > peak.Load() {
			peak.Store(rss)
		}
		if ok && rss > limit {
			exceeded.Store(true)
			_ = p.Kill()
			return
		}
	}
}

// exitFileTooLarge is the exit status of a worker that wrote past fileSizeLimit (fileTooLarge).
const (
	exitFileTooLarge = 3
	fileTooLarge     = "a file the analysis wrote reached its bound"
)

// fileSizeLimit is the largest file an analysis worker writes: a pulled layer, or one of Trivy's
// temporary files; 0 for no bound.
func fileSizeLimit(l Limits) int64 {
	if l.MaxCompressedBytes <= 0 || l.MaxTempBytes <= 0 {
		return 0
	}
	return max(l.MaxCompressedBytes, l.MaxTempBytes)
}

// diskLimit is the disk an analysis worker's folder may take: its pulled layers and Trivy's
// temporary files; 0 for no bound.
func diskLimit(l Limits) int64 {
	if l.MaxCompressedBytes <= 0 || l.MaxTempBytes <= 0 {
		return 0
	}
	return l.MaxCompressedBytes + l.MaxTempBytes
}

// diskPoll is how often watchDisk measures the worker's folder.
const diskPoll = 20 * time.Millisecond

// watchDisk kills p when the files under dir take more than limit bytes of disk, measured every
// diskPoll (or four times as long as a walk of dir takes) until done is closed: the whole of what the worker writes (each file is bounded on its
// own by RLIMIT_FSIZE), which a chain of nested archives could otherwise multiply.
func watchDisk(p *os.Process, dir string, limit int64, exceeded *atomic.Bool, done <-chan struct{}) {
	if limit <= 0 {
		return
	}
	wait := time.NewTimer(diskPoll)
	defer wait.Stop()
	for {
		select {
		case <-done:
			return
		case <-wait.C:
		}
		started := time.Now()
		if diskUsage(dir) > limit {
			exceeded.Store(true)
			_ = p.Kill()
			return
		}
		// A folder of many files takes long to walk: the walks then take at most a fifth of a
		// core, up to a walk a second (each file is bounded on its own meanwhile).
		wait.Reset(min(max(diskPoll, 4*time.Since(started)), time.Second))
	}
}

// diskUsage returns the bytes the files under dir take: their allocated blocks where the system
// says (a sparse file takes what it holds), else their sizes. Files that vanish while it walks
// are not counted.
func diskUsage(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		total += allocatedBytes(info)
		return nil
	})
	return total
}

// residentBytes reads the anonymous and shared-memory resident bytes of process pid from /proc:
// what the worker itself allocated, not the pages of the binary it shares with the controller.
func residentBytes(pid int) (int64, bool) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	var total int64
	found := false
	for line := range strings.SplitSeq(string(raw), "\n") {
		for _, key := range []string{"RssAnon:", "RssShmem:"} {
			if rest, ok := strings.CutPrefix(line, key); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				if err == nil {
					total += kb << 10
					found = true
				}
			}
		}
	}
	return total, found
}

// cappedWriter keeps at most max bytes: the first ones (truncated says some were dropped), or
// the last with keepTail. It embeds no buffer, so that io.Copy cannot go round Write through a
// ReadFrom.
type cappedWriter struct {
	buf       bytes.Buffer
	max       int64
	keepTail  bool
	truncated bool
}

func (b *cappedWriter) Write(p []byte) (int, error) {
	n := len(p)
	if b.keepTail {
		_, _ = b.buf.Write(p)
		if over := int64(b.buf.Len()) - b.max; over > 0 {
			b.buf.Next(int(over))
		}
		return n, nil
	}
	if room := b.max - int64(b.buf.Len()); room < int64(len(p)) {
		p = p[:max(room, 0)]
		b.truncated = true
	}
	_, _ = b.buf.Write(p)
	return n, nil
}

func (b *cappedWriter) Bytes() []byte  { return b.buf.Bytes() }
func (b *cappedWriter) String() string { return b.buf.String() }
