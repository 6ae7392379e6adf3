package scanner

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill the worker when the controller dies.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
