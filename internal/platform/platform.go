// Package platform says which image of a multi-platform index a node runs, as containerd's CRI
// chooses it (github.com/containerd/platforms' Only: arm64 nodes also run arm/v8..v5 images,
// amd64 nodes 386 ones; architectures spelled aarch64 or x86_64 are normalised), so that the image
// ImageGuard scans for a node's platform is the one the node pulls.
package platform

import (
	"github.com/containerd/platforms"
	specs "github.com/opencontainers/image-spec/specs-go/v1"
)

// Default is the platform of a report that names none, and of a node that reports none.
const Default = "linux/amd64"

// Parse parses os/architecture[/variant] ("" is Default), normalised as containerd does.
func Parse(p string) (specs.Platform, error) {
	if p == "" {
		p = Default
	}
	parsed, err := platforms.Parse(p)
	if err != nil {
		return specs.Platform{}, err
	}
	return platforms.Normalize(parsed), nil
}

// Format formats a platform as os/architecture[/variant], normalised.
func Format(p specs.Platform) string {
	return platforms.FormatAll(platforms.Normalize(specs.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}))
}

// Matcher is the order in which a node of platform node takes an index's images, as
// containerd's CRI does (platforms.Only).
func Matcher(node specs.Platform) platforms.MatchComparer { return platforms.Only(node) }

// Runs reports whether a node of platform node ("" for Default) may run an index's image of
// platform image; false when either is malformed.
func Runs(node, image string) bool {
	n, err := Parse(node)
	if err != nil {
		return false
	}
	i, err := Parse(image)
	if err != nil {
		return false
	}
	return platforms.Only(n).Match(i)
}
