package scanner

import (
	"os/exec"
	"syscall"
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
