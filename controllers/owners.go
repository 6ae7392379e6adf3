package controllers

import (
	"context"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// workloadRef names a top-level owner of pods.
type workloadRef struct {
	Kind string
	Name string
}

// intermediates are owners that are themselves owned: a pod's ReplicaSet belongs to a Deployment,
// its Job to a CronJob. They are read as metadata only.
var intermediates = map[string]schema.GroupVersionKind{
	"ReplicaSet": appsv1.SchemeGroupVersion.WithKind("ReplicaSet"),
	"Job":        batchv1.SchemeGroupVersion.WithKind("Job"),
}

// topOwner returns the workload pod belongs to: Deployment (via ReplicaSet), CronJob (via Job),
// StatefulSet, DaemonSet, Job, ReplicaSet without owner, another controller, or the bare Pod.
func topOwner(ctx context.Context, c client.Client, pod *corev1.Pod) (workloadRef, error) {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return workloadRef{Kind: "Pod", Name: pod.Name}, nil
	}
	gvk, ok := intermediates[ref.Kind]
	if !ok {
		return workloadRef{Kind: ref.Kind, Name: ref.Name}, nil
	}
	owner := &metav1.PartialObjectMetadata{}
	owner.SetGroupVersionKind(gvk)
	err := c.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: ref.Name}, owner)
	if apierrors.IsNotFound(err) {
		// Being deleted or not in the cache yet: the intermediate is the best answer we have.
		return workloadRef{Kind: ref.Kind, Name: ref.Name}, nil
	}
	if err != nil {
		return workloadRef{}, err
	}
	if top := metav1.GetControllerOf(owner); top != nil {
		return workloadRef{Kind: top.Kind, Name: top.Name}, nil
	}
	return workloadRef{Kind: ref.Kind, Name: ref.Name}, nil
}
