package integrity

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	wgpolicyv1alpha2 "github.com/imageguard/imageguard/api/wgpolicyk8s/v1alpha2"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/admission"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// TestSignaturesRequired: a policy requiring a signature by the key of a Secret. Under Enforce,
// kubectl apply of an unsigned Deployment is refused naming the rule and a signed one is
// admitted, and the ImageReview endpoint agrees; under Audit, the unsigned Deployment is marked
// non-compliant with reason SignatureMissing and each report records its verdict. A thousand
// admissions of the signed digest read its signatures no more.
func TestSignaturesRequired(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	key := testutil.NewSigningKey(t)
	rules := func(ns string) securityv1alpha1.PolicyRules {
		return securityv1alpha1.PolicyRules{Signatures: &securityv1alpha1.SignatureRule{Required: true,
			Keys: []securityv1alpha1.SignatureKey{{SecretRef: &securityv1alpha1.SecretKeySelector{Name: "cosign"}}}}}
	}
	secret := func(ns string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cosign"}, Data: map[string][]byte{"cosign.pub": []byte(key.PublicPEM)}}
	}
	ns := "signatures"
	judgedNamespace(g, ns, rules(ns))
	g.Expect(suite.Env.Client.Create(ctx, secret(ns))).To(Succeed())

	signedRef, _, signedDigest := testsuite.Push(t, suite.Registry, "sig/signed", testsuite.ImageOf(t.Name()+"-signed"))
	unsignedRef, _, unsignedDigest := testsuite.Push(t, suite.Registry, "sig/unsigned", testsuite.ImageOf(t.Name()+"-unsigned"))
	h, err := v1.NewHash(signedDigest)
	g.Expect(err).NotTo(HaveOccurred())
	suite.Registry.PushTagSignatures(t, "sig/signed", h, key.KeyTagSignature(t, suite.Registry.Host()+"/sig/signed", h))
	deployment := func(ns, name, image string) string {
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
	_, stderr, err := kubectl(deployment(ns, "unsigned", unsignedRef), "apply", "-f", "-")
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("ImagePolicy/" + ns + "/enforced: " + unsignedRef + ": signatures: no signature"))
	_, stderr, err = kubectl(deployment(ns, "signed", signedRef), "apply", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred(), stderr)

	// The ImageReview endpoint gives the same answers.
	apiServer, err := suite.WebhookClient(false)
	g.Expect(err).NotTo(HaveOccurred())
	review := func(image string) (bool, string) {
		body := fmt.Sprintf(`{"apiVersion":"imagepolicy.k8s.io/v1alpha1","kind":"ImageReview","spec":{"namespace":%q,"containers":[{"image":%q}]}}`, ns, image)
		resp, err := apiServer.Post(suite.WebhookURL(admission.ImagePolicyPath), "application/json", strings.NewReader(body))
		g.Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
		data, _ := io.ReadAll(resp.Body)
		var out struct {
			Status struct {
				Allowed bool   `json:"allowed"`
				Reason  string `json:"reason"`
			} `json:"status"`
		}
		g.Expect(json.Unmarshal(data, &out)).To(Succeed())
		return out.Status.Allowed, out.Status.Reason
	}
	allowed, reason := review(unsignedRef)
	g.Expect(allowed).To(BeFalse())
	g.Expect(reason).To(ContainSubstring("signatures: no signature"))
	allowed, reason = review(signedRef)
	g.Expect(allowed).To(BeTrue(), reason)

	// Cached verdicts: a thousand admissions of the signed digest read nothing from the registry.
	pinned := suite.Registry.Host() + "/sig/signed@" + signedDigest
	var mu sync.Mutex
	signatureReads := 0
	suite.Registry.SetFault(func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/sig/signed/") && (strings.Contains(r.URL.Path, "sha256-") || strings.Contains(r.URL.Path, "/referrers/")) {
			mu.Lock()
			signatureReads++
			mu.Unlock()
		}
		return false
	})
	defer suite.Registry.SetFault(nil)
	// The signed Deployment's tag names this digest: its verdict was kept when it was admitted.
	allowed, reason = review(pinned)
	g.Expect(allowed).To(BeTrue(), reason)
	mu.Lock()
	g.Expect(signatureReads).To(Equal(0))
	mu.Unlock()
	for range 1000 {
		allowed, _ := review(pinned)
		g.Expect(allowed).To(BeTrue())
	}
	mu.Lock()
	g.Expect(signatureReads).To(Equal(0))
	mu.Unlock()
	suite.Registry.SetFault(nil)

	// A registry that holds the signature reads gets no image past the rule, onUnscanned: Allow
	// notwithstanding; the verification goes on, and once it ends the next try is admitted.
	lateRef, _, lateDigest := testsuite.Push(t, suite.Registry, "sig/late", testsuite.ImageOf(t.Name()+"-late"))
	lh, err := v1.NewHash(lateDigest)
	g.Expect(err).NotTo(HaveOccurred())
	suite.Registry.PushTagSignatures(t, "sig/late", lh, key.KeyTagSignature(t, suite.Registry.Host()+"/sig/late", lh))
	release := make(chan struct{})
	suite.Registry.SetFault(func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/sig/late/") && (strings.Contains(r.URL.Path, "sha256-") || strings.Contains(r.URL.Path, "/referrers/")) {
			select {
			case <-release:
			case <-r.Context().Done():
				return true
			}
		}
		return false
	})
	_, stderr, err = kubectl(deployment(ns, "late", lateRef), "apply", "-f", "-")
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring(lateRef + ": signatures: signatures not verified in time"))
	allowed, reason = review(lateRef)
	g.Expect(allowed).To(BeFalse())
	g.Expect(reason).To(ContainSubstring("signatures not verified in time"))
	close(release)
	g.Eventually(func() error {
		_, stderr, err := kubectl(deployment(ns, "late", lateRef), "apply", "-f", "-")
		if err != nil {
			return fmt.Errorf("%v: %s", err, stderr)
		}
		return nil
	}).WithTimeout(timeout).Should(Succeed())
	suite.Registry.SetFault(nil)

	// Audit: the unsigned Deployment runs, marked non-compliant; reports hold their verdicts.
	audit := "signatures-audit"
	g.Expect(suite.Env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: audit}})).To(Succeed())
	g.Expect(suite.Env.Client.Create(ctx, secret(audit))).To(Succeed())
	p := &securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "signed", Namespace: audit},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementAudit, Rules: rules(audit)}}
	g.Expect(suite.Env.Client.Create(ctx, p)).To(Succeed())
	for name, ref := range map[string]string{"unsigned": unsignedRef, "signed": signedRef} {
		_, stderr, err := kubectl(deployment(audit, name, ref), "apply", "-f", "-")
		g.Expect(err).NotTo(HaveOccurred(), stderr)
	}
	g.Eventually(func(g Gomega) {
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKeyFromObject(p), p)).To(Succeed())
		g.Expect(p.Status.NonCompliant).To(HaveLen(1))
		g.Expect(p.Status.NonCompliant[0].Name).To(Equal("unsigned"))
		g.Expect(p.Status.NonCompliant[0].Reason).To(Equal(securityv1alpha1.ReasonSignatureMissing))
	}).WithTimeout(timeout).Should(Succeed())
	// The PolicyReport result of the rule names the typed reason.
	g.Eventually(func(g Gomega) {
		report := &wgpolicyv1alpha2.PolicyReport{}
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKey{Namespace: audit, Name: controllers.PolicyReportName}, report)).To(Succeed())
		g.Expect(report.Results).To(ContainElement(And(
			HaveField("Rule", "signatures"), HaveField("Result", wgpolicyv1alpha2.ResultFail),
			HaveField("Properties", HaveKeyWithValue("reason", securityv1alpha1.ReasonSignatureMissing)))))
	}).WithTimeout(timeout).Should(Succeed())
	for repo, digest := range map[string]string{"sig/signed": signedDigest, "sig/unsigned": unsignedDigest} {
		g.Eventually(func(g Gomega) {
			r := &securityv1alpha1.ImageScanReport{}
			key := client.ObjectKey{Namespace: audit, Name: controllers.ReportName(suite.Registry.Host()+"/"+repo, digest)}
			g.Expect(suite.Env.Client.Get(ctx, key, r)).To(Succeed())
			g.Expect(r.Status.Signatures).To(HaveLen(1))
			c := r.Status.Signatures[0]
			g.Expect(c.Policy).To(Equal("ImagePolicy/" + audit + "/signed"))
			if repo == "sig/signed" {
				g.Expect(c.Verified).To(BeTrue(), c.Message)
				g.Expect(c.SignedBy).To(HaveLen(1))
				g.Expect(c.SignedBy[0].Source).To(Equal(securityv1alpha1.SignatureSourceTag))
			} else {
				g.Expect(c.Reason).To(Equal(securityv1alpha1.ReasonSignatureMissing))
			}
		}).WithTimeout(timeout).Should(Succeed())
	}
}

// TestAVerdictMadeAtAdmissionReachesTheReport: under Warn, an unsigned image runs and its report
// says SignatureMissing. Once it is signed, the next admission that verifies it again (a failed
// verdict is verified again at admission after 30 s) writes the new verdict into the report at once,
// not at the next recheck an hour later.
func TestAVerdictMadeAtAdmissionReachesTheReport(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	key := testutil.NewSigningKey(t)
	ns := "signatures-warn"
	g.Expect(suite.Env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{admissionLabel: "true"}}})).To(Succeed())
	g.Expect(suite.Env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cosign"},
		Data: map[string][]byte{"cosign.pub": []byte(key.PublicPEM)}})).To(Succeed())
	p := &securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "signed", Namespace: ns},
		Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementWarn, Rules: securityv1alpha1.PolicyRules{
			Signatures: &securityv1alpha1.SignatureRule{Required: true, Keys: []securityv1alpha1.SignatureKey{{SecretRef: &securityv1alpha1.SecretKeySelector{Name: "cosign"}}}}}}}
	g.Expect(suite.Env.Client.Create(ctx, p)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(suite.Env.Client.Get(ctx, client.ObjectKeyFromObject(p), p)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(p.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
	}).WithTimeout(timeout).Should(Succeed())

	ref, _, digest := testsuite.Push(t, suite.Registry, "sig/later", testsuite.ImageOf(t.Name()))
	pod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: later, namespace: %s}
spec:
  containers: [{name: app, image: "%s"}]
`, ns, ref)
	_, stderr, err := kubectl(pod, "apply", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(stderr).To(ContainSubstring("signatures: no signature"))
	reportKey := client.ObjectKey{Namespace: ns, Name: controllers.ReportName(suite.Registry.Host()+"/sig/later", digest)}
	g.Eventually(func(g Gomega) {
		r := &securityv1alpha1.ImageScanReport{}
		g.Expect(suite.Env.Client.Get(ctx, reportKey, r)).To(Succeed())
		g.Expect(r.Status.Signatures).To(HaveLen(1))
		g.Expect(r.Status.Signatures[0].Reason).To(Equal(securityv1alpha1.ReasonSignatureMissing))
	}).WithTimeout(timeout).Should(Succeed())

	h, err := v1.NewHash(digest)
	g.Expect(err).NotTo(HaveOccurred())
	suite.Registry.PushTagSignatures(t, "sig/later", h, key.KeyTagSignature(t, suite.Registry.Host()+"/sig/later", h))
	// A server-side dry run goes through admission like a create; nothing else verifies the
	// digest again within the hour.
	dryRun := strings.Replace(pod, "name: later", "name: later-again", 1)
	g.Eventually(func(g Gomega) {
		_, _, err := kubectl(dryRun, "apply", "--dry-run=server", "-f", "-")
		g.Expect(err).NotTo(HaveOccurred())
		r := &securityv1alpha1.ImageScanReport{}
		g.Expect(suite.Env.Client.Get(ctx, reportKey, r)).To(Succeed())
		g.Expect(r.Status.Signatures).To(HaveLen(1))
		g.Expect(r.Status.Signatures[0].Verified).To(BeTrue(), r.Status.Signatures[0].Message)
	}).WithTimeout(2 * timeout).WithPolling(3 * time.Second).Should(Succeed())
}
