// Package workload knows the workloads ImageGuard judges and gathers what a verdict needs: the
// one table of workload kinds (each kind's pod spec, which kinds roll up into their owner), the
// containers of a pod spec, a pod's top owner, the compiled policies that apply to a namespace,
// the workloads a policy matches and the reports of their images. The policy controller, the
// PolicyReport controller, the pod controller and admission all read through it, so that status
// and admission judge a workload the same way.
package workload

import (
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Kind is a kind of object that runs containers.
type Kind struct {
	GVK schema.GroupVersionKind
	// New returns an empty object of the kind; NewList an empty list.
	New     func() client.Object
	NewList func() client.ObjectList
	// Template reaches the pod template of an object of the kind; nil for a Pod, which is its own.
	Template func(client.Object) *corev1.PodTemplateSpec
	// RollsUp is true when an object of the kind that has a controller is judged through it: a
	// Deployment's ReplicaSet, a CronJob's Job, a controller's Pod. Such objects are the steps
	// walked from a pod to its top owner.
	RollsUp bool
}

// PodSpec reaches the pod spec of obj: its own, or its pod template's.
func (k Kind) PodSpec(obj client.Object) *corev1.PodSpec {
	if k.Template == nil {
		return &obj.(*corev1.Pod).Spec
	}
	return &k.Template(obj).Spec
}

// PodLabels returns the labels obj's pods carry: its own for a Pod, else its template's.
func (k Kind) PodLabels(obj client.Object) map[string]string {
	if k.Template == nil {
		return obj.GetLabels()
	}
	return k.Template(obj).Labels
}

// Kinds is the table of the kinds ImageGuard judges, pods last.
var Kinds = []Kind{
	{GVK: appsv1.SchemeGroupVersion.WithKind("Deployment"),
		New: func() client.Object { return &appsv1.Deployment{} }, NewList: func() client.ObjectList { return &appsv1.DeploymentList{} },
		Template: func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.Deployment).Spec.Template }},
	{GVK: appsv1.SchemeGroupVersion.WithKind("StatefulSet"),
		New: func() client.Object { return &appsv1.StatefulSet{} }, NewList: func() client.ObjectList { return &appsv1.StatefulSetList{} },
		Template: func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.StatefulSet).Spec.Template }},
	{GVK: appsv1.SchemeGroupVersion.WithKind("DaemonSet"),
		New: func() client.Object { return &appsv1.DaemonSet{} }, NewList: func() client.ObjectList { return &appsv1.DaemonSetList{} },
		Template: func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.DaemonSet).Spec.Template }},
	{GVK: appsv1.SchemeGroupVersion.WithKind("ReplicaSet"), RollsUp: true,
		New: func() client.Object { return &appsv1.ReplicaSet{} }, NewList: func() client.ObjectList { return &appsv1.ReplicaSetList{} },
		Template: func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.ReplicaSet).Spec.Template }},
	{GVK: batchv1.SchemeGroupVersion.WithKind("CronJob"),
		New: func() client.Object { return &batchv1.CronJob{} }, NewList: func() client.ObjectList { return &batchv1.CronJobList{} },
		Template: func(o client.Object) *corev1.PodTemplateSpec {
			return &o.(*batchv1.CronJob).Spec.JobTemplate.Spec.Template
		}},
	{GVK: batchv1.SchemeGroupVersion.WithKind("Job"), RollsUp: true,
		New: func() client.Object { return &batchv1.Job{} }, NewList: func() client.ObjectList { return &batchv1.JobList{} },
		Template: func(o client.Object) *corev1.PodTemplateSpec { return &o.(*batchv1.Job).Spec.Template }},
	{GVK: corev1.SchemeGroupVersion.WithKind("Pod"), RollsUp: true,
		New: func() client.Object { return &corev1.Pod{} }, NewList: func() client.ObjectList { return &corev1.PodList{} }},
}

// KindOf returns the kind of group and kind in the table.
func KindOf(group, kind string) (Kind, bool) {
	for _, k := range Kinds {
		if k.GVK.Group == group && k.GVK.Kind == kind {
			return k, true
		}
	}
	return Kind{}, false
}

// Objects returns an empty object of every kind in the table, for watches.
func Objects() []client.Object {
	out := make([]client.Object, 0, len(Kinds))
	for _, k := range Kinds {
		out = append(out, k.New())
	}
	return out
}

// ContainerType says in which list of a pod spec a container is.
type ContainerType string

// The lists of a pod spec that name images.
const (
	InitContainer      ContainerType = "init"
	RegularContainer   ContainerType = "regular"
	EphemeralContainer ContainerType = "ephemeral"
	// ImageVolume is a volume whose content is an image (spec.volumes[].image): its files are in
	// the pod as surely as a container's, so it is judged like one.
	ImageVolume ContainerType = "volume"
)

// Container is one container of a pod spec and the image it runs; for an ImageVolume, the
// volume's name and image.
type Container struct {
	Name  string
	Image string
	Type  ContainerType
}

// Containers lists every image spec runs: init, regular and ephemeral containers, then image
// volumes.
func Containers(spec *corev1.PodSpec) []Container {
	out := make([]Container, 0, len(spec.InitContainers)+len(spec.Containers)+len(spec.EphemeralContainers)+len(spec.Volumes))
	for _, c := range spec.InitContainers {
		out = append(out, Container{Name: c.Name, Image: c.Image, Type: InitContainer})
	}
	for _, c := range spec.Containers {
		out = append(out, Container{Name: c.Name, Image: c.Image, Type: RegularContainer})
	}
	for _, c := range spec.EphemeralContainers {
		out = append(out, Container{Name: c.Name, Image: c.Image, Type: EphemeralContainer})
	}
	for _, v := range spec.Volumes {
		if v.Image != nil {
			out = append(out, Container{Name: v.Name, Image: v.Image.Reference, Type: ImageVolume})
		}
	}
	return out
}
