package scanner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
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
}

// workerAnswer is what a worker writes: an inventory or a typed error.
type workerAnswer struct {
	Inventory *Inventory   `json:"inventory,omitempty"`
	Error     *workerError `json:"error,omitempty"`
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
	if req.MemoryBytes > 0 {
		// The collector works hard before the watchdog's bound is reached.
		debug.SetMemoryLimit(req.MemoryBytes * 8 / 10)
	}
	ctx, cancel := context.WithTimeout(context.Background(), req.Timeout)
	defer cancel()
	s := &Scanner{
		opts:     Options{TempDir: req.TempDir, Timeout: req.Timeout, Limits: req.Limits},
		registry: registry.NewClient(req.Registry), trivyVersion: TrivyVersion(),
	}
	ref := ImageRef{Repository: req.Repository, Digest: req.Digest}
	if req.Auth != nil {
		ref.Keychain = staticKeychain{authn.FromConfig(*req.Auth)}
	}
	inv, err := s.analyze(ctx, ref)
	answer := workerAnswer{Inventory: inv}
	if err != nil {
		answer = workerAnswer{Error: &workerError{Kind: registry.KindOf(err), Message: err.Error()}}
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

// analyzeInWorker runs ref's analysis in a worker process.
func (s *Scanner) analyzeInWorker(ctx context.Context, ref ImageRef) (*Inventory, error) {
	w := s.opts.Worker
	req := workerRequest{
		Repository: ref.Repository, Digest: ref.Digest, Registry: s.registry.Options(), Limits: s.opts.Limits,
		TempDir: s.opts.TempDir, Timeout: s.opts.Timeout, MemoryBytes: w.MemoryBytes,
	}
	if ref.Keychain != nil {
		parsed, err := s.registry.ParseReference(ref.String())
		if err != nil {
			return nil, err
		}
		auth, err := ref.Keychain.Resolve(parsed.Context())
		if err != nil {
			return nil, registry.Classify(fmt.Errorf("credentials for %s: %w", parsed.Context().RegistryStr(), err))
		}
		cfg, err := authn.Authorization(ctx, auth)
		if err != nil {
			return nil, registry.Classify(fmt.Errorf("credentials for %s: %w", parsed.Context().RegistryStr(), err))
		}
		if *cfg != (authn.AuthConfig{}) {
			req.Auth = cfg
		}
	}
	stdin, err := json.Marshal(&req)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, w.Command[0], w.Command[1:]...)
	cmd.Stdin = bytes.NewReader(stdin)
	stdout := &cappedBuffer{max: s.opts.Limits.MaxInventoryBytes + 1<<20}
	stderr := &cappedBuffer{max: 16 << 10, keepTail: true}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = 5 * time.Second
	dieWithParent(cmd)

	// Pdeathsig follows the thread that started the child: it stays locked until the child ends.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting an analysis worker: %w", err)
	}
	var exceeded atomic.Bool
	done := make(chan struct{})
	go watchMemory(cmd.Process, w.MemoryBytes, &exceeded, done)
	err = cmd.Wait()
	close(done)
	switch {
	case exceeded.Load():
		return nil, registry.Errorf(registry.KindUnsupported, "the analysis of %s took more than %d bytes of memory, and was stopped (--analysis-memory-bytes)", ref, w.MemoryBytes)
	case ctx.Err() != nil:
		return nil, registry.Errorf(registry.KindTimeout, "the analysis of %s did not finish within its time limit", ref)
	case err != nil:
		return nil, registry.Errorf(registry.KindUnsupported, "the analysis worker of %s failed (%v): %s", ref, err, lastLine(stderr.String()))
	}
	var answer workerAnswer
	if err := json.Unmarshal(stdout.Bytes(), &answer); err != nil {
		return nil, fmt.Errorf("reading the analysis worker's answer: %w", err)
	}
	if answer.Error != nil {
		return nil, &registry.Error{Kind: answer.Error.Kind, RetryAfter: answer.Error.RetryAfter, Err: errors.New(answer.Error.Message)}
	}
	if answer.Inventory == nil || answer.Inventory.Digest != ref.Digest {
		return nil, errors.New("the analysis worker answered no inventory of the digest asked for")
	}
	return answer.Inventory, nil
}

// watchMemory kills p once its resident memory passes limit, until done is closed.
func watchMemory(p *os.Process, limit int64, exceeded *atomic.Bool, done <-chan struct{}) {
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
		if rss, ok := residentBytes(p.Pid); ok && rss > limit {
			exceeded.Store(true)
			_ = p.Kill()
			return
		}
	}
}

// residentBytes reads VmRSS of process pid from /proc.
func residentBytes(pid int) (int64, bool) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}

// cappedBuffer keeps at most max bytes: the first ones, or the last with keepTail.
type cappedBuffer struct {
	bytes.Buffer
	max      int64
	keepTail bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if b.keepTail {
		_, _ = b.Buffer.Write(p)
		if over := int64(b.Len()) - b.max; over > 0 {
			b.Next(int(over))
		}
		return n, nil
	}
	if room := b.max - int64(b.Len()); room < int64(len(p)) {
		p = p[:max(room, 0)]
	}
	_, _ = b.Buffer.Write(p)
	return n, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
