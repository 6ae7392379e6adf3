//go:build !linux

package scanner

import (
	"io/fs"
	"os/exec"
)

// dieWithParent does nothing here: only Linux kills a child with its parent.
func dieWithParent(*exec.Cmd) {}

// limitMemory does nothing here: the parent's watch of the worker's memory is the bound.
func limitMemory(int64) error { return nil }

// limitFileSize does nothing here.
func limitFileSize(int64) error { return nil }

// allocatedBytes is the disk a file takes: its size here.
func allocatedBytes(info fs.FileInfo) int64 { return info.Size() }

// waitFileLimit does nothing here: no file size bound.
func waitFileLimit() {}
