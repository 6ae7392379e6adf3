package controllers

import (
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/imageguard/imageguard/internal/workload"
)

// podContainer is one container of a pod, with the image ID the kubelet reported for it.
type podContainer struct {
	workload.Container
	// ImageID is the kubelet's resolved image, when it reported one.
	ImageID string
}

// podContainers lists every image of pod (init, ephemeral containers and image volumes included),
// with the image ID the kubelet reported for each container.
func podContainers(pod *corev1.Pod) []podContainer {
	ids := map[string]string{}
	for _, statuses := range [][]corev1.ContainerStatus{
		pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses, pod.Status.EphemeralContainerStatuses,
	} {
		for _, s := range statuses {
			ids[s.Name] = s.ImageID
		}
	}
	containers := workload.Containers(&pod.Spec)
	out := make([]podContainer, 0, len(containers))
	for _, c := range containers {
		pc := podContainer{Container: c}
		if c.Type != workload.ImageVolume { // statuses are a container's, a volume may share its name
			pc.ImageID = ids[c.Name]
		}
		out = append(out, pc)
	}
	return out
}

// digestOf returns the sha256 digest in a kubelet image ID such as
// docker-pullable://registry/app@sha256:..., registry/app@sha256:... or sha256:...; "" otherwise.
// A bare sha256 (an image config ID from some runtimes) is not a manifest digest and is ignored
// unless it follows an '@'.
func digestOf(imageID string) string {
	i := strings.LastIndex(imageID, "@sha256:")
	if i < 0 {
		return ""
	}
	d := imageID[i+1:]
	if !digestPattern(d) {
		return ""
	}
	return d
}

func digestPattern(d string) bool {
	if len(d) != len("sha256:")+64 || !strings.HasPrefix(d, "sha256:") {
		return false
	}
	for _, c := range d[len("sha256:"):] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
