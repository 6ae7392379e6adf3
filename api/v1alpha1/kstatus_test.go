package v1alpha1_test

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

// kstatusOf reads obj back from the API server, as a GitOps tool would, and computes its kstatus.
func kstatusOf(g Gomega, obj client.Object) status.Status {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(securityv1alpha1.GroupVersion.WithKind("ImagePolicy"))
	g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(obj), u)).To(Succeed())
	res, err := status.Compute(u)
	g.Expect(err).NotTo(HaveOccurred())
	return res.Status
}

func condition(kind string, value metav1.ConditionStatus, reason string, generation int64) metav1.Condition {
	return metav1.Condition{
		Type: kind, Status: value, Reason: reason, Message: reason,
		ObservedGeneration: generation, LastTransitionTime: metav1.Now(),
	}
}

func TestKstatusReadsPolicies(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	policy := &securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "kstatus", Namespace: "default"}}
	g.Expect(env.Client.Create(ctx, policy)).To(Succeed())

	// Evaluated, with non-compliant workloads: findings must not read as a failed or progressing
	// object, or GitOps syncs would block on them.
	policy.Status.ObservedGeneration = policy.Generation
	policy.Status.Conditions = []metav1.Condition{
		condition(securityv1alpha1.ConditionReady, metav1.ConditionTrue, securityv1alpha1.ReasonEvaluated, policy.Generation),
		condition(securityv1alpha1.ConditionCompliant, metav1.ConditionFalse, securityv1alpha1.ReasonNonCompliant, policy.Generation),
	}
	g.Expect(env.Client.Status().Update(ctx, policy)).To(Succeed())
	g.Expect(kstatusOf(g, policy)).To(Equal(status.CurrentStatus))

	// A spec change not yet observed reads as in progress.
	policy.Spec.Enforcement = securityv1alpha1.EnforcementWarn
	g.Expect(env.Client.Update(ctx, policy)).To(Succeed())
	g.Expect(policy.Generation).To(BeNumerically(">", policy.Status.ObservedGeneration))
	g.Expect(kstatusOf(g, policy)).To(Equal(status.InProgressStatus))

	// A spec that can never work reads as failed.
	policy.Status.ObservedGeneration = policy.Generation
	policy.Status.Conditions = []metav1.Condition{
		condition(securityv1alpha1.ConditionReady, metav1.ConditionFalse, securityv1alpha1.ReasonInvalidPolicy, policy.Generation),
		condition(securityv1alpha1.ConditionStalled, metav1.ConditionTrue, securityv1alpha1.ReasonInvalidPolicy, policy.Generation),
	}
	g.Expect(env.Client.Status().Update(ctx, policy)).To(Succeed())
	g.Expect(kstatusOf(g, policy)).To(Equal(status.FailedStatus))
}
