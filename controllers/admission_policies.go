package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/vap"
)

// AdmissionPolicies keeps, for each policy, the ValidatingAdmissionPolicy and binding generated
// from it (internal/vap) as they must be: created, updated when the policy changes, restored when
// edited by hand, removed when the policy stops enforcing or is deleted; and says so in the
// policy's AdmissionPolicyReady condition. The policy reconcilers call it, so that the policy's
// status has one writer. Reads go through the manager's cache, which holds only the generated
// objects (LabelGenerated), so that a reconcile whose objects are as they must be writes nothing.
type AdmissionPolicies struct {
	Client client.Client
	// APIReader reads an object the cache cannot show: one whose labels were edited away.
	APIReader client.Reader
	Options   vap.Options
	// Off, when set, is why nothing is generated (ReasonGenerationDisabled or
	// ReasonAdmissionPolicyUnsupported); the objects generated before are removed at start.
	Off string
}

// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingadmissionpolicies;validatingadmissionpolicybindings,verbs=get;list;watch;create;update;delete

// Ensure makes the objects generated from obj what they must be and sets obj's
// AdmissionPolicyReady condition (the caller writes the status). invalid is why the policy can
// never be evaluated, or nil. An error is a failed API call: the condition then says so, and the
// caller retries.
func (a *AdmissionPolicies) Ensure(ctx context.Context, obj statusObject, ref string, invalid error) error {
	if a.Off != "" {
		msg := "--generate-admission-policies is false: only ImageGuard's webhook enforces the policy"
		if a.Off == securityv1alpha1.ReasonAdmissionPolicyUnsupported {
			msg = "the API server does not serve admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy: only ImageGuard's webhook enforces the policy"
		}
		setCondition(obj, securityv1alpha1.ConditionAdmissionPolicyReady, metav1.ConditionFalse, a.Off, msg)
		return nil
	}
	name := vap.Name(ref)
	var objs *vap.Objects
	err := invalid
	if err == nil {
		var ns *corev1.Namespace
		if obj.GetNamespace() != "" {
			ns = &corev1.Namespace{}
			if getErr := a.Client.Get(ctx, client.ObjectKey{Name: obj.GetNamespace()}, ns); getErr != nil {
				ns = nil // owned by its namespace once the cache shows it
			}
		}
		objs, err = vap.Generate(obj, ns, a.Options)
	}
	if err != nil {
		reason := securityv1alpha1.ReasonInvalidPolicy
		switch {
		case errors.Is(err, vap.ErrNotEnforcing):
			reason = securityv1alpha1.ReasonNotEnforcing
		case errors.Is(err, vap.ErrNoGeneratedRules):
			reason = securityv1alpha1.ReasonNoGeneratedRules
		case errors.Is(err, vap.ErrExemptNamespace):
			reason = securityv1alpha1.ReasonExemptNamespace
		case errors.Is(err, vap.ErrTooLarge):
			reason = securityv1alpha1.ReasonAdmissionPolicyTooLarge
		}
		if rmErr := a.remove(ctx, name); rmErr != nil {
			return a.failed(obj, rmErr)
		}
		setCondition(obj, securityv1alpha1.ConditionAdmissionPolicyReady, metav1.ConditionFalse, reason,
			"no ValidatingAdmissionPolicy: "+err.Error())
		return nil
	}
	current := &admissionregistrationv1.ValidatingAdmissionPolicy{}
	if err := a.apply(ctx, objs.Policy, current, func(existing client.Object) bool {
		return apiequality.Semantic.DeepEqual(existing.(*admissionregistrationv1.ValidatingAdmissionPolicy).Spec, objs.Policy.Spec)
	}, func(existing client.Object) {
		existing.(*admissionregistrationv1.ValidatingAdmissionPolicy).Spec = objs.Policy.Spec
	}); err != nil {
		return a.failed(obj, err)
	}
	if err := a.apply(ctx, objs.Binding, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}, func(existing client.Object) bool {
		return apiequality.Semantic.DeepEqual(existing.(*admissionregistrationv1.ValidatingAdmissionPolicyBinding).Spec, objs.Binding.Spec)
	}, func(existing client.Object) {
		existing.(*admissionregistrationv1.ValidatingAdmissionPolicyBinding).Spec = objs.Binding.Spec
	}); err != nil {
		return a.failed(obj, err)
	}
	// The API server's type check (kube-controller-manager runs it) of the current generation.
	if tc := current.Status.TypeChecking; current.Status.ObservedGeneration == current.Generation && tc != nil && len(tc.ExpressionWarnings) > 0 {
		w := tc.ExpressionWarnings[0]
		setCondition(obj, securityv1alpha1.ConditionAdmissionPolicyReady, metav1.ConditionFalse, securityv1alpha1.ReasonTypeCheckFailed,
			fmt.Sprintf("ValidatingAdmissionPolicy %s: the API server's type check warns of %s: %s", name, w.FieldRef, w.Warning))
		return nil
	}
	action := "refuse"
	if objs.Binding.Spec.ValidationActions[0] == admissionregistrationv1.Warn {
		action = "warn of"
	}
	setCondition(obj, securityv1alpha1.ConditionAdmissionPolicyReady, metav1.ConditionTrue, securityv1alpha1.ReasonAdmissionPolicyGenerated,
		fmt.Sprintf("ValidatingAdmissionPolicy %s and its binding %s what breaks the policy's %s rules, even while ImageGuard is unreachable",
			name, action, strings.Join(objs.Rules, " and ")))
	return nil
}

// failed says in obj's condition that writing the generated objects failed, and returns err.
func (a *AdmissionPolicies) failed(obj statusObject, err error) error {
	setCondition(obj, securityv1alpha1.ConditionAdmissionPolicyReady, metav1.ConditionFalse, securityv1alpha1.ReasonGenerationFailed,
		"writing the ValidatingAdmissionPolicy failed (retried): "+err.Error())
	return err
}

// apply creates desired, or makes the existing object (read into existing) what desired is: its
// spec (same reports whether it already is; set makes it so), labels, annotations and owners.
func (a *AdmissionPolicies) apply(ctx context.Context, desired, existing client.Object, same func(client.Object) bool, set func(client.Object)) error {
	key := client.ObjectKeyFromObject(desired)
	err := a.Client.Get(ctx, key, existing)
	if apierrors.IsNotFound(err) {
		err = a.Client.Create(ctx, desired)
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
		// Its labels were edited away, so the cache does not show it.
		err = a.APIReader.Get(ctx, key, existing)
	}
	if err != nil {
		return err
	}
	if same(existing) && hasAll(existing.GetLabels(), desired.GetLabels()) && hasAll(existing.GetAnnotations(), desired.GetAnnotations()) &&
		apiequality.Semantic.DeepEqual(existing.GetOwnerReferences(), desired.GetOwnerReferences()) {
		return nil
	}
	set(existing)
	existing.SetLabels(merged(existing.GetLabels(), desired.GetLabels()))
	existing.SetAnnotations(merged(existing.GetAnnotations(), desired.GetAnnotations()))
	existing.SetOwnerReferences(desired.GetOwnerReferences())
	return a.Client.Update(ctx, existing)
}

func hasAll(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func merged(have, want map[string]string) map[string]string {
	out := maps.Clone(have)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, want)
	return out
}

// ensure is Ensure, and nothing on a nil AdmissionPolicies.
func (a *AdmissionPolicies) ensure(ctx context.Context, obj statusObject, ref string, invalid error) error {
	if a == nil {
		return nil
	}
	return a.Ensure(ctx, obj, ref, invalid)
}

// Remove deletes the objects generated from the deleted policy ref.
func (a *AdmissionPolicies) Remove(ctx context.Context, ref string) error {
	if a == nil || a.Off != "" {
		return nil
	}
	return a.remove(ctx, vap.Name(ref))
}

// remove deletes the generated objects called name, if the cache shows them.
func (a *AdmissionPolicies) remove(ctx context.Context, name string) error {
	for _, obj := range []client.Object{&admissionregistrationv1.ValidatingAdmissionPolicyBinding{}, &admissionregistrationv1.ValidatingAdmissionPolicy{}} {
		err := a.Client.Get(ctx, client.ObjectKey{Name: name}, obj)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err == nil {
			err = a.Client.Delete(ctx, obj, client.Preconditions{UID: ptr.To(obj.GetUID())})
		}
		if client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}

// watch makes changes to the generated objects (a hand edit, a deletion) reconcile the policy
// they were generated from, if it is of the kind of b's reconciler.
func (a *AdmissionPolicies) watch(b *ctrl.Builder, clusterScoped bool) *ctrl.Builder {
	if a == nil || a.Off != "" {
		return b
	}
	toPolicy := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		kind, rest, _ := strings.Cut(obj.GetAnnotations()[vap.AnnotationPolicy], "/")
		switch {
		case clusterScoped && kind == "ClusterImagePolicy":
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: rest}}}
		case !clusterScoped && kind == "ImagePolicy":
			ns, name, _ := strings.Cut(rest, "/")
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}}
		}
		return nil
	})
	return b.Watches(&admissionregistrationv1.ValidatingAdmissionPolicy{}, toPolicy).
		Watches(&admissionregistrationv1.ValidatingAdmissionPolicyBinding{}, toPolicy)
}

// admissionPoliciesServed reports whether the API server serves ValidatingAdmissionPolicy v1.
func admissionPoliciesServed(mgr ctrl.Manager) bool {
	_, err := mgr.GetRESTMapper().RESTMapping(schema.GroupKind{Group: admissionregistrationv1.GroupName, Kind: "ValidatingAdmissionPolicy"}, "v1")
	return err == nil
}

// generatedSelector selects the objects ImageGuard generates.
var generatedSelector = labels.SelectorFromSet(labels.Set{vap.LabelGenerated: "true"})

// removeAllGenerated deletes, once at start, every object generated before generation was turned
// off, so that none keeps enforcing a policy as it was.
func removeAllGenerated(reader client.Reader, c client.Writer) manager.RunnableFunc {
	return func(ctx context.Context) error {
		log := ctrl.LoggerFrom(ctx).WithName("admission-policies")
		for _, list := range []client.ObjectList{&admissionregistrationv1.ValidatingAdmissionPolicyBindingList{}, &admissionregistrationv1.ValidatingAdmissionPolicyList{}} {
			if err := reader.List(ctx, list, client.MatchingLabelsSelector{Selector: generatedSelector}); err != nil {
				if meta.IsNoMatchError(err) {
					return nil
				}
				log.Error(err, "listing the ValidatingAdmissionPolicies generated before; they stay")
				return nil
			}
			if err := meta.EachListItem(list, func(o runtime.Object) error {
				obj := o.(client.Object)
				if err := c.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
					log.Error(err, "removing a generated object", "name", obj.GetName())
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	}
}
