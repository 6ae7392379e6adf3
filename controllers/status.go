package controllers

import (
	"context"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

// statusObject is an object whose status ImageGuard writes: conditions and an observed generation.
type statusObject interface {
	client.Object
	GetConditions() []metav1.Condition
	SetConditions([]metav1.Condition)
	SetObservedGeneration(int64)
}

// writeStatus is the one way status is written (Cluster API's patch helper is the model): it sets
// status.observedGeneration to obj's generation, then patches obj's status from before, the object
// as it was read, only where it differs. It reports whether it wrote. Without options no resource
// version is sent (each controller owns its fields); client.MergeFromWithOptimisticLock makes the
// write fail with a conflict when the object changed since it was read.
func writeStatus(ctx context.Context, c client.Client, before, obj statusObject, opts ...client.MergeFromOption) (bool, error) {
	obj.SetObservedGeneration(obj.GetGeneration())
	return patchIfChanged(before, obj, opts, func(p client.Patch) error { return c.Status().Patch(ctx, obj, p) })
}

// writeObject patches obj (metadata and spec) from before only where it differs, and reports
// whether it wrote.
func writeObject(ctx context.Context, c client.Client, before, obj client.Object) (bool, error) {
	return patchIfChanged(before, obj, nil, func(p client.Patch) error { return c.Patch(ctx, obj, p) })
}

// patchIfChanged computes the JSON merge patch from before to obj and sends it (with opts) when it
// is not empty.
func patchIfChanged(before, obj client.Object, opts []client.MergeFromOption, send func(client.Patch) error) (bool, error) {
	data, err := client.MergeFrom(before).Data(obj)
	if err != nil {
		return false, err
	}
	if string(data) == "{}" {
		return false, nil
	}
	if len(opts) > 0 {
		return true, send(client.MergeFromWithOptions(before, opts...))
	}
	return true, send(client.RawPatch(types.MergePatchType, data))
}

// setCondition sets a condition of obj for its current generation; its transition time moves
// only when its status does.
func setCondition(obj statusObject, condition string, status metav1.ConditionStatus, reason, message string) {
	conditions := obj.GetConditions()
	meta.SetStatusCondition(&conditions, metav1.Condition{
		Type: condition, Status: status, Reason: reason, Message: message, ObservedGeneration: obj.GetGeneration(),
	})
	obj.SetConditions(sortedConditions(conditions))
}

// sortedConditions orders conditions by type, Ready first: whatever path set them, the same
// conditions are the same list, so that no write is made for an order alone.
func sortedConditions(conditions []metav1.Condition) []metav1.Condition {
	slices.SortStableFunc(conditions, func(a, b metav1.Condition) int {
		switch {
		case a.Type == b.Type:
			return 0
		case a.Type == securityv1alpha1.ConditionReady:
			return -1
		case b.Type == securityv1alpha1.ConditionReady:
			return 1
		}
		return strings.Compare(a.Type, b.Type)
	})
	return conditions
}

// removeCondition removes a condition of obj.
func removeCondition(obj statusObject, condition string) {
	conditions := obj.GetConditions()
	meta.RemoveStatusCondition(&conditions, condition)
	obj.SetConditions(conditions)
}
