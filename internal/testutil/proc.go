package testutil

import (
	"os"
	"strconv"
	"strings"
)

// ProcessMiB reads a memory field of this process's /proc/self/status ("VmRSS", "VmHWM") in MiB;
// 0 where it cannot be read.
func ProcessMiB(field string) float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb / 1024
			}
		}
	}
	return 0
}
