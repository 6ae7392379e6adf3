package workload

import (
	"regexp"

	corev1 "k8s.io/api/core/v1"

	"github.com/imageguard/imageguard/internal/policy"
)

var platformPart = regexp.MustCompile(`^[a-z0-9][a-z0-9_]{0,30}$`)

// NodePlatform returns the report platform of an OS and architecture, as a node reports them or
// a nodeSelector asks for them: "" for policy.DefaultPlatform, and for an architecture that is
// missing or malformed.
func NodePlatform(osName, arch string) string {
	if osName == "" {
		osName = "linux"
	}
	if !platformPart.MatchString(osName) || !platformPart.MatchString(arch) {
		return ""
	}
	if p := osName + "/" + arch; p != policy.DefaultPlatform {
		return p
	}
	return ""
}

// RequestedPlatforms returns the platforms a pod spec restricts it to, as NodePlatform gives them:
// its nodeSelector's kubernetes.io/os and kubernetes.io/arch, else the architectures the terms of
// its required node affinity allow (each term must name them with In, or the pod may land on any
// node). nil when it names none: the pod may run on every platform.
func RequestedPlatforms(spec *corev1.PodSpec) []string {
	if spec == nil {
		return nil
	}
	if arch := spec.NodeSelector[corev1.LabelArchStable]; arch != "" {
		return []string{NodePlatform(spec.NodeSelector[corev1.LabelOSStable], arch)}
	}
	a := spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		var archs []string
		osName := spec.NodeSelector[corev1.LabelOSStable]
		for _, e := range term.MatchExpressions {
			switch {
			case e.Key == corev1.LabelArchStable && e.Operator == corev1.NodeSelectorOpIn:
				archs = e.Values
			case e.Key == corev1.LabelOSStable && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1:
				osName = e.Values[0]
			}
		}
		if len(archs) == 0 {
			return nil // this term lets the pod run on any architecture
		}
		for _, arch := range archs {
			if p := NodePlatform(osName, arch); !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}
