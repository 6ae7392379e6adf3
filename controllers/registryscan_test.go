package controllers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/controllers"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

// registryScan creates a RegistryScan in ns and deletes it when the test ends, so that no scan
// of one test lists the registry while another counts its requests.
func registryScan(t *testing.T, g Gomega, ns, name string, spec securityv1alpha1.RegistryScanSpec) *securityv1alpha1.RegistryScan {
	t.Helper()
	s := &securityv1alpha1.RegistryScan{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
	g.Expect(env.Client.Create(context.Background(), s)).To(Succeed())
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), s) })
	return s
}

func getScan(g Gomega, ns, name string) *securityv1alpha1.RegistryScan {
	s := &securityv1alpha1.RegistryScan{}
	g.Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, s)).To(Succeed())
	return s
}

// readyScan waits until the scan is Ready for its current spec and returns it.
func readyScan(g Gomega, ns, name string, wait time.Duration) *securityv1alpha1.RegistryScan {
	var s *securityv1alpha1.RegistryScan
	g.Eventually(func(g Gomega) {
		s = getScan(g, ns, name)
		g.Expect(s.Status.ObservedGeneration).To(Equal(s.Generation))
		g.Expect(meta.IsStatusConditionTrue(s.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue(), "conditions: %v", s.Status.Conditions)
	}).WithTimeout(wait).Should(Succeed())
	return s
}

// scanReports returns the reports of ns that name scan as a source, by digest.
func scanReports(g Gomega, ns, scan string) map[string]*securityv1alpha1.ImageScanReport {
	list := &securityv1alpha1.ImageScanReportList{}
	g.Expect(env.Client.List(context.Background(), list, client.InNamespace(ns))).To(Succeed())
	out := map[string]*securityv1alpha1.ImageScanReport{}
	for i := range list.Items {
		r := &list.Items[i]
		if slices.ContainsFunc(r.Status.Sources, func(s securityv1alpha1.ReportSource) bool { return s.RegistryScan == scan }) {
			out[r.Spec.Digest] = r
		}
	}
	return out
}

// TestRegistryScanSelectsTagsAndAnalysesEachDigestOnce lists 1,500 tags of three repositories,
// paginated, and scans the digests the filter selects, each once although two tags name it.
func TestRegistryScanSelectsTagsAndAnalysesEachDigestOnce(t *testing.T) {
	g := NewWithT(t)
	ns := "rscan-many"
	namespace(g, ns)
	// 3 repositories x 100 images x 5 tags: 1.0.0 to 4.24.0, v-prefixed, release candidates,
	// commit and build tags.
	want := map[string][]string{} // digest -> selected tags
	for _, repo := range []string{"many/api", "many/web", "many/worker"} {
		for i := range 100 {
			img := testsuite.Image(fmt.Sprintf("%s-%d", repo, i))
			major, minor := 1+i/25, i%25
			version := fmt.Sprintf("%d.%d.0", major, minor)
			var digest string
			for _, tag := range []string{version, "v" + version, version + "-rc.1", fmt.Sprintf("sha-%07x", i*7919), fmt.Sprintf("build-%03d", i)} {
				_, d := reg.Push(t, repo, tag, img)
				digest = d.String()
			}
			// The filter: 4.x versions but 4.20 to 4.24; no release candidate (semver).
			if major == 4 && minor < 20 {
				want[digest] = []string{version, "v" + version}
			}
		}
	}
	analyses := scan.Analyses()
	start := time.Now()
	registryScan(t, g, ns, "many", securityv1alpha1.RegistryScanSpec{
		Repositories: []string{reg.Host() + "/many/**"},
		Tags:         &securityv1alpha1.TagFilter{Semver: ">= 4.0.0", Exclude: []string{`v?4\.2[0-4]\..*`}},
	})
	var listed time.Duration
	g.Eventually(func(g Gomega) {
		s := getScan(g, ns, "many")
		g.Expect(s.Status.LastListTime).NotTo(BeNil())
		listed = time.Since(start)
	}).WithTimeout(2 * timeout).Should(Succeed())
	s := readyScan(g, ns, "many", 3*timeout)
	t.Logf("1,500 tags over 3 repositories: listed in %s, %d digests scanned in %s", listed.Round(time.Millisecond), len(want), time.Since(start).Round(time.Millisecond))

	g.Expect(s.Status.Repositories).To(BeEquivalentTo(3))
	g.Expect(s.Status.Tags).To(BeEquivalentTo(2 * len(want)))
	g.Expect(s.Status.Digests).To(BeEquivalentTo(len(want)))
	g.Expect(s.Status.Scanned).To(BeEquivalentTo(len(want)))
	g.Expect(s.Status.Failed).To(BeZero())
	g.Expect(s.Status.Worst).To(HaveLen(10))
	reports := scanReports(g, ns, "many")
	g.Expect(reports).To(HaveLen(len(want)))
	// The status adds up the reports' findings (the suite's DB at this point decides how many).
	var critical int32
	for _, r := range reports {
		critical += r.Status.Summary.Critical
	}
	g.Expect(critical).To(BeNumerically(">=", len(want)), "each image has a critical finding at least")
	g.Expect(s.Status.Summary.Critical).To(Equal(critical))
	for digest, tags := range want {
		r := reports[digest]
		g.Expect(r).NotTo(BeNil(), "no report of %s", digest)
		g.Expect(r.Labels[controllers.RegistryScanLabel]).To(Equal("true"))
		g.Expect(r.Status.Sources).To(ConsistOf(securityv1alpha1.ReportSource{RegistryScan: "many", Repository: r.Spec.Image, Tags: sortedCopy(tags)}))
		g.Expect(r.Spec.Tags).To(Equal(sortedCopy(tags)))
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionScanned)).To(BeTrue())
	}
	// One analysis per digest, although two tags name each.
	g.Expect(scan.Analyses() - analyses).To(BeEquivalentTo(len(want)))

	// kubectl shows the counts.
	out, err := env.RunKubectl(context.Background(), "get", "rscan", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(MatchRegexp(`(?m)^NAME\s+REPOSITORIES\s+TAGS\s+DIGESTS\s+CRITICAL\s+HIGH\s+READY\s+AGE`))
	g.Expect(out).To(MatchRegexp(fmt.Sprintf(`(?m)^many\s+3\s+%d\s+%d\s+%d\s+%d\s+True`, 2*len(want), len(want), critical, s.Status.Summary.High)))
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// postNotification posts body to the receiver for ns/name with the Authorization header auth.
func postNotification(g Gomega, ns, name, auth string, body []byte) (int, string) {
	req, err := http.NewRequest(http.MethodPost, "http://"+receiverAddress+controllers.ReceiverPath+ns+"/"+name, bytes.NewReader(body))
	g.Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v1+json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	var answer struct{ Message string }
	_ = json.NewDecoder(resp.Body).Decode(&answer)
	return resp.StatusCode, answer.Message
}

func distributionPush(repo, tag, digest string) []byte {
	return must(json.Marshal(map[string]any{"events": []any{map[string]any{
		"id": "1", "timestamp": time.Now().UTC().Format(time.RFC3339), "action": "push",
		"target":  map[string]any{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "repository": repo, "tag": tag, "url": "http://" + reg.Host() + "/v2/" + repo + "/manifests/" + digest},
		"request": map[string]any{"host": reg.Host(), "method": "PUT"},
	}}}))
}

func harborPush(repo, tag, digest string) []byte {
	return must(json.Marshal(map[string]any{
		"type": "PUSH_ARTIFACT", "occur_at": time.Now().Unix(), "operator": "admin",
		"event_data": map[string]any{
			"resources":  []any{map[string]any{"digest": digest, "tag": tag, "resource_url": reg.Host() + "/" + repo + ":" + tag}},
			"repository": map[string]any{"name": "app", "namespace": "push", "repo_full_name": repo, "repo_type": "private"},
		},
	}))
}

// TestPushNotificationsListAtOnce: a tag pushed gets its report at once after a notification to
// the receiver; a wrong token or a malformed body is refused and nothing is listed.
func TestPushNotificationsListAtOnce(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "rscan-push"
	namespace(g, ns)
	_, d1 := reg.Push(t, "push/app", "1.0.0", testsuite.Image("push-1"))
	g.Expect(env.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "hook-token", Namespace: ns},
		Data:       map[string][]byte{"token": []byte("the-token")},
	})).To(Succeed())
	registryScan(t, g, ns, "app", securityv1alpha1.RegistryScanSpec{
		Repositories: []string{reg.Host() + "/push/app"},
		Receiver:     &securityv1alpha1.ReceiverSpec{SecretRef: securityv1alpha1.LocalSecretReference{Name: "hook-token"}},
	})
	readyScan(g, ns, "app", timeout)
	g.Expect(scanReports(g, ns, "app")).To(HaveKey(d1.String()))

	_, d2 := reg.Push(t, "push/app", "1.1.0", testsuite.Image("push-2"))
	reg.ResetCounts()
	body := distributionPush("push/app", "1.1.0", d2.String())
	for _, tt := range []struct {
		name, auth string
		body       []byte
		code       int
	}{
		{"no token", "", body, http.StatusUnauthorized},
		{"wrong token", "Bearer not-the-token", body, http.StatusUnauthorized},
		{"a prefix of the token", "Bearer the-tok", body, http.StatusUnauthorized},
		{"malformed body", "Bearer the-token", []byte(`{"events": [`), http.StatusBadRequest},
		{"neither format", "Bearer the-token", []byte(`{"hello": "world"}`), http.StatusBadRequest},
		{"an event without repository", "Bearer the-token", []byte(`{"events": [{"action": "push", "target": {}}]}`), http.StatusBadRequest},
	} {
		code, msg := postNotification(g, ns, "app", tt.auth, tt.body)
		g.Expect(code).To(Equal(tt.code), "%s: %s", tt.name, msg)
	}
	code, _ := postNotification(g, ns, "no-such-scan", "Bearer the-token", body)
	g.Expect(code).To(Equal(http.StatusUnauthorized))
	// Past 1 MiB: refused before it is read whole.
	code, _ = postNotification(g, ns, "app", "Bearer the-token", append([]byte(`{"events":[],"pad":"`), bytes.Repeat([]byte("x"), 2<<20)...))
	g.Expect(code).To(Equal(http.StatusRequestEntityTooLarge))
	resp, err := http.Get("http://" + receiverAddress + controllers.ReceiverPath + ns + "/app")
	g.Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusMethodNotAllowed))
	// A push of another repository asks for nothing.
	code, msg := postNotification(g, ns, "app", "Bearer the-token", distributionPush("push/other", "1.0.0", d2.String()))
	g.Expect(code).To(Equal(http.StatusAccepted))
	g.Expect(msg).To(ContainSubstring("nothing to do"))
	g.Consistently(func() int { return reg.Counts().Requests }).WithTimeout(2*time.Second).Should(BeZero(), "nothing was listed")
	g.Expect(scanReports(g, ns, "app")).NotTo(HaveKey(d2.String()))

	// The Distribution registry's notification: listed at once (the interval is 6h).
	code, msg = postNotification(g, ns, "app", "Bearer the-token", body)
	g.Expect(code).To(Equal(http.StatusAccepted), msg)
	g.Eventually(func(g Gomega) {
		g.Expect(scanReports(g, ns, "app")).To(HaveKey(d2.String()))
	}).WithTimeout(timeout).Should(Succeed())
	readyScan(g, ns, "app", timeout)

	// Harbor's webhook, with the token as its whole auth header.
	img3 := testsuite.Image("push-3")
	_, d3 := reg.Push(t, "push/app", "1.2.0", img3)
	code, msg = postNotification(g, ns, "app", "the-token", harborPush("push/app", "1.2.0", d3.String()))
	g.Expect(code).To(Equal(http.StatusAccepted), msg)
	g.Eventually(func(g Gomega) {
		g.Expect(scanReports(g, ns, "app")).To(HaveKey(d3.String()))
	}).WithTimeout(timeout).Should(Succeed())
	g.Eventually(func(g Gomega) {
		s := readyScan(g, ns, "app", timeout)
		g.Expect(s.Status.Digests).To(BeEquivalentTo(3))
		g.Expect(s.Status.Scanned).To(BeEquivalentTo(3))
	}).WithTimeout(timeout).Should(Succeed())

	// The tag 1.1.0 moved to the third image: that report has it (admission's last-known lookup
	// reads spec.tags), and the second image, no longer listed, loses the scan.
	reg.Push(t, "push/app", "1.1.0", img3)
	code, msg = postNotification(g, ns, "app", "Bearer the-token", distributionPush("push/app", "1.1.0", d3.String()))
	g.Expect(code).To(Equal(http.StatusAccepted), msg)
	g.Eventually(func(g Gomega) {
		reports := scanReports(g, ns, "app")
		g.Expect(reports).NotTo(HaveKey(d2.String()))
		g.Expect(reports).To(HaveKey(d3.String()))
		g.Expect(reports[d3.String()].Spec.Tags).To(Equal([]string{"1.1.0", "1.2.0"}))
	}).WithTimeout(timeout).Should(Succeed())
}

// TestANewTagIsListedWithinTheInterval: with no notification, a tag pushed is found at the next
// listing, one interval later.
func TestANewTagIsListedWithinTheInterval(t *testing.T) {
	g := NewWithT(t)
	ns := "rscan-interval"
	namespace(g, ns)
	reg.Push(t, "interval/app", "1.0.0", testsuite.Image("interval-1"))
	registryScan(t, g, ns, "app", securityv1alpha1.RegistryScanSpec{
		Repositories: []string{reg.Host() + "/interval/app"},
		Interval:     &metav1.Duration{Duration: time.Minute},
	})
	first := readyScan(g, ns, "app", timeout)
	_, d2 := reg.Push(t, "interval/app", "1.1.0", testsuite.Image("interval-2"))
	g.Eventually(func(g Gomega) {
		g.Expect(scanReports(g, ns, "app")).To(HaveKey(d2.String()))
		later := getScan(g, ns, "app")
		g.Expect(later.Status.Digests).To(BeEquivalentTo(2))
		// Found by the listing one interval later, not before.
		g.Expect(later.Status.LastListTime.Sub(first.Status.LastListTime.Time)).To(BeNumerically(">=", 59*time.Second))
	}).WithTimeout(time.Minute + timeout).Should(Succeed())
}

// TestDeletedTagsReportGoesAfterRetention: a tag deleted from the registry loses its report after
// --report-retention (2s here); a report a pod also uses stays.
func TestDeletedTagsReportGoesAfterRetention(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "rscan-retention"
	namespace(g, ns)
	_, gone := reg.Push(t, "retention/app", "1.0.0", testsuite.Image("retention-gone"))
	refUsed, used := reg.Push(t, "retention/app", "2.0.0", testsuite.Image("retention-used"))
	_, kept := reg.Push(t, "retention/app", "3.0.0", testsuite.Image("retention-kept"))
	registryScan(t, g, ns, "app", securityv1alpha1.RegistryScanSpec{Repositories: []string{reg.Host() + "/retention/app"}})
	readyScan(g, ns, "app", timeout)
	g.Expect(scanReports(g, ns, "app")).To(HaveLen(3))
	createPod(g, ns, "runs-2", refUsed, reg.Host()+"/retention/app@"+used.String())
	g.Eventually(func(g Gomega) {
		g.Expect(report(g, ns, "retention/app", used.String()).Status.Workloads).NotTo(BeEmpty())
	}).WithTimeout(timeout).Should(Succeed())

	reg.DeleteTag(t, "retention/app", "1.0.0")
	reg.DeleteTag(t, "retention/app", "2.0.0")
	// Listed again now (as after a notification, or the interval).
	s := getScan(g, ns, "app")
	metav1.SetMetaDataAnnotation(&s.ObjectMeta, securityv1alpha1.RequestedAtAnnotation, "after-delete")
	g.Expect(env.Client.Update(ctx, s)).To(Succeed())
	g.Eventually(func(g Gomega) {
		s := getScan(g, ns, "app")
		g.Expect(s.Status.LastHandledRequest).To(Equal("after-delete"))
		g.Expect(s.Status.Digests).To(BeEquivalentTo(1))
	}).WithTimeout(timeout).Should(Succeed())

	// The deleted tag's report goes after the retention; the pod's stays, and so does the tag
	// still listed.
	g.Eventually(func(g Gomega) {
		r := &securityv1alpha1.ImageScanReport{}
		err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: controllers.ReportName(reg.Host()+"/retention/app", gone.String())}, r)
		g.Expect(client.IgnoreNotFound(err)).To(Succeed())
		g.Expect(err).To(HaveOccurred(), "the report of the deleted tag is still there")
	}).WithTimeout(timeout).Should(Succeed())
	g.Consistently(func(g Gomega) {
		g.Expect(report(g, ns, "retention/app", used.String()).Status.Sources).To(BeEmpty())
		g.Expect(report(g, ns, "retention/app", kept.String()).Status.Sources).To(HaveLen(1))
	}).WithTimeout(3 * time.Second).Should(Succeed())

	// The scan deleted: its last report goes too, after the retention.
	g.Expect(env.Client.Delete(ctx, s)).To(Succeed())
	g.Eventually(func(g Gomega) {
		r := &securityv1alpha1.ImageScanReport{}
		err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: controllers.ReportName(reg.Host()+"/retention/app", kept.String())}, r)
		g.Expect(client.IgnoreNotFound(err)).To(Succeed())
		g.Expect(err).To(HaveOccurred())
	}).WithTimeout(timeout).Should(Succeed())
	report(g, ns, "retention/app", used.String())
}

// TestPrivateRepositoryScanNeedsItsSecret: Unauthorized on the scan's status until the Secret it
// names exists, then Ready, its image scanned with the same credentials.
func TestPrivateRepositoryScanNeedsItsSecret(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "rscan-private"
	namespace(g, ns)
	_, d := private.Push(t, "rscan/private", "1.0.0", testsuite.Image("rscan-private"))
	registryScan(t, g, ns, "private", securityv1alpha1.RegistryScanSpec{
		Repositories: []string{private.Host() + "/rscan/private"},
		SecretRef:    &securityv1alpha1.LocalSecretReference{Name: "registry-creds"},
	})
	g.Eventually(func(g Gomega) {
		s := getScan(g, ns, "private")
		c := meta.FindStatusCondition(s.Status.Conditions, securityv1alpha1.ConditionReady)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(Equal(securityv1alpha1.ReasonUnauthorized))
		g.Expect(s.Status.Failures).NotTo(BeEmpty())
		g.Expect(s.Status.Failures[0].Reason).To(Equal(securityv1alpha1.ReasonUnauthorized))
	}).WithTimeout(timeout).Should(Succeed())

	config := must(json.Marshal(map[string]any{"auths": map[string]any{private.Host(): map[string]string{"username": "puller", "password": "s3cret"}}}))
	g.Expect(env.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "registry-creds", Namespace: ns},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: config},
	})).To(Succeed())
	s := readyScan(g, ns, "private", timeout)
	g.Expect(s.Status.Scanned).To(BeEquivalentTo(1))
	g.Expect(s.Status.Failures).To(BeEmpty())
	r := scanReports(g, ns, "private")[d.String()]
	g.Expect(r).NotTo(BeNil())
	g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionScanned)).To(BeTrue())
	g.Expect(r.Status.Summary.Total).To(BeNumerically(">=", 2))
	for _, c := range s.Status.Conditions {
		g.Expect(c.Message).NotTo(ContainSubstring("s3cret"))
	}
}

// TestRegistryScanDecidesTheFirstApply: under onUnscanned: Deny, the first kubectl apply of a
// Deployment whose image a RegistryScan covers is decided from its report: refused for its
// critical finding, or admitted; not refused as unscanned.
func TestRegistryScanDecidesTheFirstApply(t *testing.T) {
	g := NewWithT(t)
	ns := "rscan-admission"
	admissionNamespace(g, ns)
	critical, _ := reg.Push(t, "rscan-adm/app", "1.0.0", testsuite.Image("rscan-adm-critical"))
	clean, _ := reg.Push(t, "rscan-adm/app", "2.0.0", testsuite.ImageOf("rscan-adm-clean", testutil.APKPackage{Name: "busybox", Version: "1.37.0-r20"}))
	registryScan(t, g, ns, "app", securityv1alpha1.RegistryScanSpec{Repositories: []string{reg.Host() + "/rscan-adm/app"}})
	imagePolicy(g, ns, "no-critical", securityv1alpha1.EnforcementEnforce, securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		OnUnscanned:     securityv1alpha1.UnscannedDeny,
	})
	readyScan(g, ns, "app", timeout)

	_, stderr, err := kubectlApply(deploymentYAML(ns, "critical", critical))
	g.Expect(err).To(HaveOccurred())
	g.Expect(stderr).To(MatchRegexp(`rscan-adm/app:1.0.0: vulnerabilities: \d+ critical \(max 0\)`))
	g.Expect(stderr).NotTo(ContainSubstring("not scanned yet"))
	_, stderr, err = kubectlApply(deploymentYAML(ns, "clean", clean))
	g.Expect(err).NotTo(HaveOccurred(), stderr)
}
