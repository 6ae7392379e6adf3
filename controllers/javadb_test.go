package controllers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/testsuite"
)

// A Java image scanned before any Java DB is loaded says so on its report (JavaDBUnavailable),
// and is analysed again, with its jars, once the Java DB arrives; no restart.
func TestJavaImagesWaitForTheJavaDB(t *testing.T) {
	g := NewWithT(t)
	img, err := testsuite.JavaImage(t.Name())
	g.Expect(err).NotTo(HaveOccurred())
	ref, imageID, digest := testsuite.Push(t, reg, "java/app", img)
	g.Expect(suite.JavaDB.Loaded()).To(BeFalse(), "no image needed the Java DB before")
	javaObject := &securityv1alpha1.VulnerabilityDatabase{}
	javaKey := client.ObjectKey{Name: securityv1alpha1.JavaDatabaseName}
	g.Expect(apierrors.IsNotFound(env.Client.Get(context.Background(), javaKey, javaObject))).To(BeTrue(), "no Java DB object before one is asked for")
	namespace(g, "java")
	before := scan.Analyses()
	createPod(g, "java", "app", ref, imageID)

	// The suite publishes no Java DB: the report says what it lacks.
	var r *securityv1alpha1.ImageScanReport
	g.Eventually(func(g Gomega) {
		r = readyReport(g, "java", "java/app", digest)
		cond := meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionScanned)
		g.Expect(cond.Reason).To(Equal(securityv1alpha1.ReasonJavaDBUnavailable))
		g.Expect(cond.Message).To(ContainSubstring("2 Java archives"))
		g.Expect(r.Status.JavaArchivesNotAnalysed).To(BeEquivalentTo(2))
	}).WithTimeout(timeout).Should(Succeed())
	g.Expect(ids(r)).NotTo(ContainElement(HavePrefix("CVE-2026-53")))
	g.Expect(meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionReady).Reason).To(Equal(securityv1alpha1.ReasonJavaDBUnavailable))
	// The Java DB's object says it was asked for and is not there.
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(context.Background(), javaKey, javaObject)).To(Succeed())
		cond := meta.FindStatusCondition(javaObject.Status.Conditions, securityv1alpha1.ConditionReady)
		g.Expect(cond).NotTo(BeNil())
		g.Expect(cond.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(cond.Reason).To(Equal(securityv1alpha1.ReasonDatabaseUnavailable))
		g.Expect(javaObject.Status.LastError).NotTo(BeEmpty())
	}).WithTimeout(timeout).Should(Succeed())

	// The Java DB is published: the manager's next try (asked again by the waiting report at
	// its next visit, or by the next jar) loads it, and the report gets its Java findings.
	javaDigest := reg.PublishJavaDB(t, testsuite.JavaDBRepository, "1", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), nil)
	g.Eventually(func() bool { suite.JavaDB.Want(); return suite.JavaDB.Loaded() }).WithTimeout(timeout).WithPolling(500 * time.Millisecond).Should(BeTrue())
	g.Eventually(func(g Gomega) {
		r = readyReport(g, "java", "java/app", digest)
		cond := meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionScanned)
		g.Expect(cond.Reason).To(Equal(securityv1alpha1.ReasonScanSucceeded))
		var java []string
		for _, v := range r.Status.Vulnerabilities {
			if strings.Contains(v.Package, "log4j") {
				java = append(java, v.ID+" "+v.Package+" "+v.InstalledVersion)
			}
		}
		g.Expect(java).To(ConsistOf("CVE-2026-5301 org.apache.logging.log4j:log4j-core 2.19.0"))
		g.Expect(r.Status.JavaArchivesNotAnalysed).To(BeZero())
	}).WithTimeout(timeout).Should(Succeed())
	g.Expect(scan.Analyses()-before).To(BeEquivalentTo(2), "once without the Java DB, once with it")

	// kubectl get vdb shows both DBs; the Java DB's is Ready with the artifact's digest.
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(context.Background(), javaKey, javaObject)).To(Succeed())
		g.Expect(javaObject.Status.Digest).To(Equal(javaDigest.String()))
		g.Expect(meta.IsStatusConditionTrue(javaObject.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
		g.Expect(meta.FindStatusCondition(javaObject.Status.Conditions, securityv1alpha1.ConditionStale)).To(BeNil())
	}).WithTimeout(timeout).Should(Succeed())
	out, err := env.RunKubectl(context.Background(), "get", "vdb")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(And(ContainSubstring(securityv1alpha1.VulnerabilityDatabaseName), ContainSubstring(securityv1alpha1.JavaDatabaseName)))
}
