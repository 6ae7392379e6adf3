package workload

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
)

func TestNodePlatform(t *testing.T) {
	tests := map[string]struct{ os, arch, want string }{
		"amd64 is the default":     {"linux", "amd64", ""},
		"arm64":                    {"linux", "arm64", "linux/arm64"},
		"no OS reported":           {"", "arm64", "linux/arm64"},
		"nothing reported":         {"", "", ""},
		"windows":                  {"windows", "amd64", "windows/amd64"},
		"a malformed arch":         {"linux", "arm64/../x", ""},
		"an upper-case spelling":   {"Linux", "ARM64", ""},
		"an architecture too long": {"linux", strings.Repeat("a", 40), ""},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(NodePlatform(tt.os, tt.arch)).To(Equal(tt.want))
		})
	}
}

func TestRequestedPlatforms(t *testing.T) {
	g := NewWithT(t)
	affinity := func(terms ...corev1.NodeSelectorTerm) *corev1.PodSpec {
		return &corev1.PodSpec{Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms},
		}}}
	}
	arch := func(op corev1.NodeSelectorOperator, values ...string) corev1.NodeSelectorTerm {
		return corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelArchStable, Operator: op, Values: values}}}
	}
	g.Expect(RequestedPlatforms(nil)).To(BeNil())
	g.Expect(RequestedPlatforms(&corev1.PodSpec{})).To(BeNil())
	g.Expect(RequestedPlatforms(&corev1.PodSpec{NodeSelector: map[string]string{corev1.LabelArchStable: "arm64"}})).To(Equal([]string{"linux/arm64"}))
	g.Expect(RequestedPlatforms(&corev1.PodSpec{NodeSelector: map[string]string{corev1.LabelArchStable: "amd64"}})).To(Equal([]string{""}))
	g.Expect(RequestedPlatforms(affinity(arch(corev1.NodeSelectorOpIn, "arm64", "amd64")))).To(Equal([]string{"linux/arm64", ""}))
	g.Expect(RequestedPlatforms(affinity(arch(corev1.NodeSelectorOpIn, "arm64"), arch(corev1.NodeSelectorOpIn, "s390x")))).To(Equal([]string{"linux/arm64", "linux/s390x"}))
	// A term that does not name the architecture (or excludes one) lets the pod run anywhere.
	g.Expect(RequestedPlatforms(affinity(arch(corev1.NodeSelectorOpIn, "arm64"), corev1.NodeSelectorTerm{}))).To(BeNil())
	g.Expect(RequestedPlatforms(affinity(arch(corev1.NodeSelectorOpNotIn, "amd64")))).To(BeNil())
}
