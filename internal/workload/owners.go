package workload

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Owner names a top-level owner of pods: a kind of the table judged at its template, an owner of
// another kind (an Argo Rollout, a Tekton TaskRun, any operator's), or the bare Pod itself.
type Owner struct {
	APIVersion string
	Kind       string
	Name       string
	UID        types.UID
}

// InTable reports whether the owner is of a kind of the table, which is judged at its own pod
// template; an owner of another kind is judged through its pods.
func (o Owner) InTable() bool {
	gv, err := schema.ParseGroupVersion(o.APIVersion)
	if err != nil {
		return false
	}
	_, ok := KindOf(gv.Group, o.Kind)
	return ok
}

// maxOwnerDepth bounds the walk up owner references, which a cycle could make endless.
const maxOwnerDepth = 8

// TopOwner returns the workload pod belongs to, walking up controller references through the
// kinds that roll up (ReplicaSet, Job) with metadata-only reads: a Deployment via its ReplicaSet,
// a CronJob via its Job, an operator's kind via its ReplicaSet or directly, a StatefulSet,
// DaemonSet, Job or ReplicaSet without owner, or the bare Pod. An owner that cannot be read (being
// deleted, not in the cache yet) ends the walk at the reference that names it.
func TopOwner(ctx context.Context, reader client.Reader, pod *corev1.Pod) (Owner, error) {
	top := Owner{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}
	ref := metav1.GetControllerOf(pod)
	for range maxOwnerDepth {
		if ref == nil {
			return top, nil
		}
		top = Owner{APIVersion: ref.APIVersion, Kind: ref.Kind, Name: ref.Name, UID: ref.UID}
		gv, err := schema.ParseGroupVersion(ref.APIVersion)
		if err != nil {
			return top, nil
		}
		kind, ok := KindOf(gv.Group, ref.Kind)
		if !ok || !kind.RollsUp {
			return top, nil
		}
		owner := &metav1.PartialObjectMetadata{}
		owner.SetGroupVersionKind(kind.GVK)
		err = reader.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: ref.Name}, owner)
		if apierrors.IsNotFound(err) {
			return top, nil
		}
		if err != nil {
			return Owner{}, fmt.Errorf("reading the owner %s %s/%s of pod %s: %w", ref.Kind, pod.Namespace, ref.Name, pod.Name, err)
		}
		ref = metav1.GetControllerOf(owner)
	}
	return top, nil
}
