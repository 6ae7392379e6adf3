package controllers_test

import (
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"

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
	}).WithTimeout(timeout).Should(Succeed())
	g.Expect(ids(r)).NotTo(ContainElement(HavePrefix("CVE-2026-53")))
	g.Expect(meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionReady).Reason).To(Equal(securityv1alpha1.ReasonJavaDBUnavailable))

	// The Java DB is published: the manager's next try (asked again by the waiting report at
	// its next visit, or by the next jar) loads it, and the report gets its Java findings.
	reg.PublishJavaDB(t, testsuite.JavaDBRepository, "1", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), nil)
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
	}).WithTimeout(timeout).Should(Succeed())
	g.Expect(scan.Analyses()-before).To(BeEquivalentTo(2), "once without the Java DB, once with it")
}
