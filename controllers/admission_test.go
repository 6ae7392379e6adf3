package controllers_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/testsuite"
)

// admissionTestLabel marks the namespaces the suite's webhook configuration selects, so that the
// other tests' workloads are not judged.
const admissionTestLabel = "imageguard-test/admission"

func admissionNamespace(g Gomega, name string) {
	g.Expect(env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: name, Labels: map[string]string{admissionTestLabel: "true"},
	}})).To(Succeed())
}

func imagePolicy(g Gomega, ns, name string, enforcement securityv1alpha1.Enforcement, rules securityv1alpha1.PolicyRules) {
	p := &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       securityv1alpha1.ImagePolicySpec{Enforcement: enforcement, Rules: rules},
	}
	g.Expect(env.Client.Create(context.Background(), p)).To(Succeed())
	// The webhook decides from the manager's cache: wait until the policy is evaluated, which
	// means the cache holds it.
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(p), p)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(p.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
	}).WithTimeout(timeout).Should(Succeed())
}

// deploymentYAML is a Deployment of image as a user would write it.
func deploymentYAML(ns, name, image string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[2]s}}
  template:
    metadata: {labels: {app: %[2]s}}
    spec:
      containers: [{name: app, image: "%[3]s"}]
`, ns, name, image)
}

// kubectlApply applies manifest with the real kubectl and returns its stdout, stderr and error.
func kubectlApply(manifest string, extra ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	cmd := env.KubectlCmd(context.Background(), append([]string{"apply", "-f", "-"}, extra...)...)
	cmd.Stdin = strings.NewReader(manifest)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

func TestEnforcePolicyRefusesDeploymentAtAdmission(t *testing.T) {
	g := NewWithT(t)
	ns := "adm-enforce"
	admissionNamespace(g, ns)
	// Created before the policy: it must keep working (scaling) once the policy exists.
	_, _, err := kubectlApply(deploymentYAML(ns, "legacy", "evil.example.com/legacy:1"))
	g.Expect(err).NotTo(HaveOccurred())
	imagePolicy(g, ns, "trusted-registries", securityv1alpha1.EnforcementEnforce, securityv1alpha1.PolicyRules{
		Registries: &securityv1alpha1.RegistryRule{Allowed: []string{reg.Host() + "/**"}},
	})

	_, stderr, err := kubectlApply(deploymentYAML(ns, "web", "evil.example.com/web:1"))
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("denied the request"))
	g.Expect(stderr).To(ContainSubstring("ImagePolicy/adm-enforce/trusted-registries: evil.example.com/web:1: registries"))
	g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web"}, &appsv1.Deployment{})).NotTo(Succeed())

	// A bare pod and a CronJob's template are judged too.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bare", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "evil.example.com/web:1"}}}}
	g.Expect(env.Client.Create(context.Background(), pod)).To(MatchError(ContainSubstring("registries")))
	_, stderr, err = kubectlApply(fmt.Sprintf(`apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: %s}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          initContainers: [{name: setup, image: "evil.example.com/setup:1"}]
          containers: [{name: job, image: "%s/ok/job:1"}]
`, ns, reg.Host()))
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("evil.example.com/setup:1: registries"))

	// Scaling the older Deployment leaves its images as they are: admitted.
	_, err = env.RunKubectl(context.Background(), "scale", "deployment/legacy", "-n", ns, "--replicas=3")
	g.Expect(err).NotTo(HaveOccurred())
	// Changing its image to another untrusted one is judged.
	_, err = env.RunKubectl(context.Background(), "set", "image", "deployment/legacy", "-n", ns, "app=evil.example.com/legacy:2")
	g.Expect(err).To(MatchError(ContainSubstring("evil.example.com/legacy:2: registries")))

	// A namespace that opts out is not judged.
	_, err = env.RunKubectl(context.Background(), "label", "namespace", ns, admission.OptOutLabel+"=disabled")
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func() error {
		_, _, err := kubectlApply(deploymentYAML(ns, "web", "evil.example.com/web:1"))
		return err
	}).WithTimeout(timeout).Should(Succeed())
}

func TestWarnAndAuditPoliciesAdmitAndQueueTheScan(t *testing.T) {
	g := NewWithT(t)
	ref, _, digest := testsuite.Push(t, reg, "adm/critical", testsuite.Image("adm-critical"))
	warnNS, auditNS := "adm-warn", "adm-audit"
	admissionNamespace(g, warnNS)
	admissionNamespace(g, auditNS)
	noCritical := securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		OnUnscanned:     securityv1alpha1.UnscannedAllow,
	}
	imagePolicy(g, warnNS, "no-critical", securityv1alpha1.EnforcementWarn, noCritical)
	imagePolicy(g, auditNS, "no-critical", securityv1alpha1.EnforcementAudit, noCritical)

	// Never scanned: onUnscanned Allow admits, and the scan starts at once although no pod runs
	// (the test control plane has no controller-manager to create any).
	_, stderr, err := kubectlApply(deploymentYAML(warnNS, "first", ref))
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	g.Expect(stderr).NotTo(ContainSubstring("Warning"))
	rep := readyReport(g, warnNS, "adm/critical", digest)
	g.Expect(rep.Status.Summary.Critical).To(BeNumerically(">=", 1))

	// Scanned now: Warn admits and kubectl prints the warning.
	g.Eventually(func(g Gomega) {
		_, stderr, err := kubectlApply(deploymentYAML(warnNS, "second", ref))
		g.Expect(err).NotTo(HaveOccurred(), stderr)
		g.Expect(stderr).To(ContainSubstring("Warning: ImagePolicy/adm-warn/no-critical: " + ref + ": vulnerabilities: "))
		g.Expect(stderr).To(ContainSubstring("critical (max 0)"))
	}).WithTimeout(timeout).Should(Succeed())

	// Audit admits silently; the report of another namespace is read for the same digest.
	_, stderr, err = kubectlApply(deploymentYAML(auditNS, "app", ref))
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	g.Expect(stderr).NotTo(ContainSubstring("Warning"))
}

func TestOnUnscannedDenyRefusesUntilScanned(t *testing.T) {
	g := NewWithT(t)
	ref, _, digest := testsuite.Push(t, reg, "adm/unscanned", testsuite.Image("adm-unscanned"))
	ns := "adm-unscanned"
	admissionNamespace(g, ns)
	imagePolicy(g, ns, "scanned-only", securityv1alpha1.EnforcementEnforce, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](5)},
		OnUnscanned:     securityv1alpha1.UnscannedDeny,
	})
	_, stderr, err := kubectlApply(deploymentYAML(ns, "app", ref))
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("not scanned yet (onUnscanned: Deny)"))
	// The refused request queued the scan; once scanned, the same Deployment is admitted.
	readyReport(g, ns, "adm/unscanned", digest)
	g.Eventually(func() error {
		_, _, err := kubectlApply(deploymentYAML(ns, "app", ref))
		return err
	}).WithTimeout(timeout).Should(Succeed())
}
