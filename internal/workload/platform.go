package workload

import (
	"regexp"

	corev1 "k8s.io/api/core/v1"
)

// DefaultPlatform is the platform of a report whose spec.platform is empty: the image an index
// digest names for it is scanned.
const DefaultPlatform = "linux/amd64"

var platformPart = regexp.MustCompile(`^[a-z0-9][a-z0-9_]{0,30}$`)

// NodePlatform returns the report platform of an OS and architecture, as a node reports them or
// a nodeSelector asks for them: "" for DefaultPlatform, and for an architecture that is missing or
// malformed.
func NodePlatform(osName, arch string) string {
	if osName == "" {
		osName = "linux"
	}
	if !platformPart.MatchString(osName) || !platformPart.MatchString(arch) {
		return ""
	}
	if p := osName + "/" + arch; p != DefaultPlatform {
		return p
	}
	return ""
}

// RequestedPlatform returns the platform a pod spec's nodeSelector asks for (kubernetes.io/os and
// kubernetes.io/arch), as NodePlatform gives it; false when it asks for no architecture.
func RequestedPlatform(spec *corev1.PodSpec) (string, bool) {
	if spec == nil || spec.NodeSelector[corev1.LabelArchStable] == "" {
		return "", false
	}
	return NodePlatform(spec.NodeSelector[corev1.LabelOSStable], spec.NodeSelector[corev1.LabelArchStable]), true
}
