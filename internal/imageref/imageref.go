// Package imageref spells image references one way: every spelling of a registry host and of
// Docker Hub's repositories is brought to one canonical form, so that nothing that matches, names
// or configures images by host (policy globs, exceptions, report names and specs, insecure
// registries) can be got around by another spelling of the same image.
package imageref

import "strings"

// DockerHub is the canonical host of Docker Hub images.
const DockerHub = "docker.io"

// dockerHubAliases are the other names Docker Hub is reached by.
var dockerHubAliases = map[string]bool{
	"index.docker.io": true, "registry-1.docker.io": true, "registry.hub.docker.com": true,
}

// CanonicalHost returns the one spelling of a registry host: lower case (hosts are
// case-insensitive), without the default HTTPS port, and docker.io for every name of Docker Hub.
func CanonicalHost(host string) string {
	host = strings.ToLower(host)
	host = strings.TrimSuffix(host, ":443")
	if dockerHubAliases[host] {
		return DockerHub
	}
	return host
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
