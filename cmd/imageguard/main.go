// Command imageguard is ImageGuard's one binary. `imageguard controller` (the default) runs the
// manager that keeps every image in the cluster scanned and held to policy.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/imageguard/imageguard/internal/scanner"
)

const usage = `imageguard keeps every image running in a cluster scanned for vulnerabilities and held to policy.

Usage:
  imageguard [controller] [flags]   run the controller manager (the default command)
  imageguard scan IMAGE [flags]     scan one image with the same engine and print its findings
  imageguard sbom IMAGE [flags]     write one image's SBOM (CycloneDX or SPDX) from its package inventory
  imageguard verify IMAGE [flags]   verify the image's signatures as a policy's signature rule does
  imageguard help                   show this help

Run 'imageguard COMMAND --help' for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches to a command and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	command := "controller"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		command, args = args[0], args[1:]
	}
	switch command {
	case "controller":
		return runController(args, stderr)
	case "scan":
		return runScan(args, stdout, stderr)
	case "sbom":
		return runSBOM(args, stdout, stderr)
	case "verify":
		return runVerify(args, stdout, stderr)
	case "analyze-worker":
		// Not for users: the controller runs one per analysis (scanner.WorkerOptions).
		return scanner.RunWorker(os.Stdin, stdout)
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "imageguard: unknown command %q\n\n%s", command, usage)
		return 2
	}
}
