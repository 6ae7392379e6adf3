package admission

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The platforms admission asks an index to be scanned on are those of the nodes the pod's node
// selector and affinity let it on (not its tolerations), and of the nodes that may join.
func TestNodePlatformsFollowPlacement(t *testing.T) {
	g := NewWithT(t)
	node := func(name, osName, arch string, labels map[string]string, taints ...corev1.Taint) client.Object {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Spec: corev1.NodeSpec{Taints: taints},
			Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{OperatingSystem: osName, Architecture: arch}}}
	}
	gpu := corev1.Taint{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}
	c := indexedClient(
		node("amd", "linux", "amd64", nil),
		node("arm", "linux", "arm64", nil, gpu),
		node("win", "windows", "amd64", map[string]string{corev1.LabelOSStable: "windows"}),
		node("z", "linux", "s390x", map[string]string{"pool": "mainframe"}),
		node("soft", "linux", "ppc64le", nil, corev1.Taint{Key: "x", Effect: corev1.TaintEffectPreferNoSchedule}),
	)
	s := &CacheState{Reader: c}
	platforms := func(spec *corev1.PodSpec) []string {
		out, err := s.NodePlatforms(context.Background(), spec)
		g.Expect(err).NotTo(HaveOccurred())
		return out
	}
	// Taints do not rule a node out (tolerations a template lacks come later); the selector does.
	g.Expect(platforms(&corev1.PodSpec{})).To(ConsistOf("", "linux/arm64", "windows/amd64", "linux/s390x", "linux/ppc64le"))
	g.Expect(platforms(&corev1.PodSpec{NodeSelector: map[string]string{"pool": "mainframe"}})).To(ConsistOf("linux/s390x"))
	g.Expect(platforms(&corev1.PodSpec{NodeSelector: map[string]string{corev1.LabelOSStable: "windows"}})).To(ConsistOf("windows/amd64"))
	g.Expect(platforms(&corev1.PodSpec{Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"arm"}}},
		}}},
	}}})).To(ConsistOf("linux/arm64"), "matchFields on the node's name")
	// An ImageReview has no spec: every node.
	g.Expect(platforms(nil)).To(ConsistOf("", "linux/arm64", "windows/amd64", "linux/s390x", "linux/ppc64le"))
	// A node whose kubelet has not said its platform yet may be any.
	g.Expect(c.Create(context.Background(), node("new", "", "", nil))).To(Succeed())
	g.Expect(platforms(&corev1.PodSpec{NodeSelector: map[string]string{"pool": "mainframe"}})).To(ConsistOf("linux/s390x"))
	g.Expect(platforms(&corev1.PodSpec{})).To(ContainElement(UnknownPlatform))
	g.Expect(platforms(nil)).To(ContainElement(UnknownPlatform))
	g.Expect(c.Delete(context.Background(), node("new", "", "", nil))).To(Succeed())
	// Nodes that may join count for every pod.
	s.ExtraNodePlatforms = []string{"linux/riscv64"}
	g.Expect(platforms(&corev1.PodSpec{NodeSelector: map[string]string{"pool": "mainframe"}})).To(ConsistOf("linux/riscv64", "linux/s390x"))
}
