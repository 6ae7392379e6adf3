package controllers_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/controllers"
)

// BenchmarkPolicyEvaluation measures the policy controller on the test control plane: 1,000
// Deployments in 20 namespaces over 50 scanned images, judged by 5 ClusterImagePolicies. It
// reports the time until all five have evaluated every workload, then the time of a full
// re-evaluation after each policy's spec changed. It runs once whatever b.N is:
//
//	KUBEBUILDER_ASSETS=$(hack/control-plane.sh) GOEXPERIMENT=jsonv2 \
//	  go test ./controllers -run '^$' -bench PolicyEvaluation -benchtime 1x
func BenchmarkPolicyEvaluation(b *testing.B) {
	const namespaces, perNamespace, images, policies = 20, 50, 50, 5
	ctx := context.Background()
	c := benchClient(b)
	// Reports are written as the report controller would; the namespaces are excluded from the pod
	// controller so that it does not collect reports no pod uses.
	digest := func(i int) string { return fmt.Sprintf("sha256:%064x", i+1) }
	// Matched against the current DB already, so the report controller leaves them alone; the
	// registry is a loopback address nothing listens on, should anything try it.
	current, _ := db.Info()
	for n := range namespaces {
		ns := fmt.Sprintf("policy-scale-%02d", n)
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{controllers.ExcludeLabel: "true", "policy-scale": "yes"},
		}}); err != nil {
			b.Fatal(err)
		}
		for i := range images {
			repo := fmt.Sprintf("127.0.0.1:1/scale/app-%02d", i)
			r := &securityv1alpha1.ImageScanReport{
				ObjectMeta: metav1.ObjectMeta{Name: controllers.ReportName(repo, digest(i)), Namespace: ns},
				Spec:       securityv1alpha1.ImageScanReportSpec{Image: repo, Digest: digest(i), Tags: []string{"1.0"}},
			}
			if err := c.Create(ctx, r); err != nil {
				b.Fatal(err)
			}
			r.Status = securityv1alpha1.ImageScanReportStatus{
				ObservedGeneration: r.Generation, LastScanTime: ptr.To(metav1.Now()),
				VulnerabilityDB: &securityv1alpha1.VulnerabilityDB{Digest: current.Digest},
				Summary:         &securityv1alpha1.VulnerabilitySummary{Critical: int32(i % 3), High: int32(i % 5), Total: int32(i%3 + i%5)},
				Conditions: []metav1.Condition{
					{Type: securityv1alpha1.ConditionScanned, Status: metav1.ConditionTrue, Reason: securityv1alpha1.ReasonScanSucceeded, LastTransitionTime: metav1.Now()},
					{Type: securityv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: securityv1alpha1.ReasonScanSucceeded, LastTransitionTime: metav1.Now()},
				},
			}
			if err := c.Status().Update(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
		for w := range perNamespace {
			labels := map[string]string{"app": fmt.Sprintf("w%02d", w)}
			d := &appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("w%02d", w), Namespace: ns, Labels: labels},
				Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{Containers: []corev1.Container{
						{Name: "app", Image: fmt.Sprintf("127.0.0.1:1/scale/app-%02d:1.0", (n+w)%images)},
						{Name: "sidecar", Image: fmt.Sprintf("127.0.0.1:1/scale/app-%02d:1.0", (n*7+w)%images)},
					}},
				}},
			}
			if err := c.Create(ctx, d); err != nil {
				b.Fatal(err)
			}
		}
	}
	workloads := int32(namespaces * perNamespace)
	start := time.Now()
	var names []string
	for p := range policies {
		pol := &securityv1alpha1.ClusterImagePolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-%d", p)},
			Spec: securityv1alpha1.ClusterImagePolicySpec{
				Match: securityv1alpha1.ClusterImageMatch{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"policy-scale": "yes"}}},
				Rules: securityv1alpha1.PolicyRules{
					Registries:      &securityv1alpha1.RegistryRule{Allowed: []string{"127.0.0.1:*/**"}},
					Tags:            &securityv1alpha1.TagRule{DisallowLatest: true},
					Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To(int32(p % 3)), MaxHigh: ptr.To(int32(p + 1))},
				},
			},
		}
		if err := c.Create(ctx, pol); err != nil {
			b.Fatal(err)
		}
		names = append(names, pol.Name)
	}
	waitPolicies(b, c, names, workloads)
	b.ReportMetric(time.Since(start).Seconds(), "s-first-evaluation")

	start = time.Now()
	for _, name := range names {
		// The controller may write the policy's status between the read and the update.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			pol := &securityv1alpha1.ClusterImagePolicy{}
			if err := c.Get(ctx, client.ObjectKey{Name: name}, pol); err != nil {
				return err
			}
			pol.Spec.Rules.Vulnerabilities.MaxHigh = ptr.To(*pol.Spec.Rules.Vulnerabilities.MaxHigh + 1)
			return c.Update(ctx, pol)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	waitPolicies(b, c, names, workloads)
	b.ReportMetric(time.Since(start).Seconds(), "s-full-reevaluation")
	b.ReportMetric(float64(workloads*policies), "workload-verdicts")
}

// waitPolicies polls until every named policy evaluated its current generation over workloads.
func waitPolicies(b *testing.B, c client.Client, names []string, workloads int32) {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		done := 0
		for _, name := range names {
			pol := &securityv1alpha1.ClusterImagePolicy{}
			if err := c.Get(context.Background(), client.ObjectKey{Name: name}, pol); err != nil {
				b.Fatal(err)
			}
			if pol.Status.ObservedGeneration == pol.Generation && pol.Status.Summary != nil && pol.Status.Summary.Workloads == workloads {
				done++
			}
		}
		if done == len(names) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d policies evaluated after 10 minutes", done, len(names))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
