// Package imageref spells image references one way: every spelling of a registry host and of
// Docker Hub's repositories is brought to one canonical form, so that nothing that matches, names
// or configures images by host (policy globs, exceptions, report names and specs, insecure
// registries) can be got around by another spelling of the same image.
package imageref

import (
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
)

// DockerHub is the canonical host of Docker Hub images.
const DockerHub = "docker.io"

// dockerHubAliases are the other names Docker Hub is reached by.
var dockerHubAliases = map[string]bool{
	"index.docker.io": true, "registry-1.docker.io": true, "registry.hub.docker.com": true,
}

// DockerHubAliases returns the other names Docker Hub is reached by, sorted.
func DockerHubAliases() []string {
	return slices.Sorted(maps.Keys(dockerHubAliases))
}

// CanonicalHost returns the one spelling of a registry host: lower case (hosts are
// case-insensitive), its port as the number it dials (":05000" is ":5000"), without the default
// HTTPS port 443, an IPv6 address in its shortest form, and docker.io for every name of Docker Hub.
func CanonicalHost(host string) string {
	host = strings.ToLower(host)
	name, port := host, ""
	if h, p, err := net.SplitHostPort(host); err == nil {
		name, port = h, p
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		name = host[1 : len(host)-1]
	}
	if n, err := strconv.Atoi(port); err == nil && n >= 0 && port != "" {
		port = strconv.Itoa(n)
	}
	if port == "443" {
		port = ""
	}
	ipv6 := false
	if ip := net.ParseIP(name); ip != nil && strings.Contains(name, ":") {
		name, ipv6 = ip.String(), true
	}
	if dockerHubAliases[name] && port == "" {
		return DockerHub
	}
	switch {
	case port != "":
		return net.JoinHostPort(name, port)
	case ipv6:
		return "[" + name + "]"
	}
	return name
}

// CanonicalRepository returns the one spelling of host/path: the canonical host, and Docker Hub's
// official images under library/ ("docker.io/nginx" is "docker.io/library/nginx").
func CanonicalRepository(host, path string) string {
	host = CanonicalHost(host)
	if host == DockerHub && !strings.Contains(path, "/") {
		path = "library/" + path
	}
	return host + "/" + path
}
