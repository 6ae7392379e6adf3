package scanner

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// dieWithParent makes the kernel kill the worker when the controller dies.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// limitMemory caps the worker's data mappings (RLIMIT_DATA, which counts Go's heap since Linux
// 4.7): past it the Go runtime fails with "runtime: out of memory" at once, however fast the
// worker allocates, before the parent's watch of its resident memory could lag.
func limitMemory(bytes int64) error {
	return syscall.Setrlimit(syscall.RLIMIT_DATA, &syscall.Rlimit{Cur: uint64(bytes), Max: uint64(bytes)})
}

// limitFileSize caps each file the worker writes (RLIMIT_FSIZE): what Trivy unpacks of an archive
// (a nested jar, say) can then be no larger than fileSizeLimit, whatever its headers declare; a
// write past it fails (Go ignores SIGXFSZ) and Trivy skips that file.
func limitFileSize(bytes int64) error {
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: uint64(bytes), Max: uint64(bytes)}); err != nil {
		return err
	}
	// A write past the bound fails, and Trivy's analyzers skip a file whose copy failed (a
	// nested jar's packages would vanish without a word): the kernel's SIGXFSZ, which Go
	// otherwise ignores, ends the analysis instead.
	xfsz := make(chan os.Signal, 1)
	signal.Notify(xfsz, syscall.SIGXFSZ)
	go func() {
		<-xfsz
		close(fileLimitHit)
		fmt.Fprintf(os.Stderr, "analyze-worker: %s\n", fileTooLarge)
		os.Exit(exitFileTooLarge)
	}()
	return nil
}

// fileLimitHit is closed when a write passed RLIMIT_FSIZE.
var fileLimitHit = make(chan struct{})

// waitFileLimit gives a SIGXFSZ raised by the analysis's last writes the time to be delivered
// before the worker answers (the write failed at once, the signal comes through the runtime): if
// one came, the worker is exiting and never answers.
func waitFileLimit() {
	select {
	case <-fileLimitHit:
		select {} // the handler exits the process
	case <-time.After(20 * time.Millisecond):
	}
}

// allocatedBytes is the disk a file takes: its allocated blocks.
func allocatedBytes(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}
