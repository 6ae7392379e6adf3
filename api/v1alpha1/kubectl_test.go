package v1alpha1_test

import (
	"context"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

// table splits kubectl's table output into rows of fields.
func table(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

// rowOf returns the row whose NAME column (the one after NAMESPACE with -A) is name.
func rowOf(rows [][]string, name string) map[string]string {
	header := rows[0]
	for _, row := range rows[1:] {
		if len(row) != len(header) {
			continue
		}
		cells := map[string]string{}
		for i, h := range header {
			cells[h] = row[i]
		}
		if cells["NAME"] == name {
			return cells
		}
	}
	return nil
}

func TestKubectlShowsReports(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	g.Expect(env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-kubectl"}})).To(Succeed())

	report := &securityv1alpha1.ImageScanReport{
		ObjectMeta: metav1.ObjectMeta{Name: "app-0123456789ab", Namespace: "team-kubectl"},
		Spec: securityv1alpha1.ImageScanReportSpec{
			Image: "registry.example.com/team/app", Digest: testDigest, Tags: []string{"1.4.2"},
		},
	}
	g.Expect(env.Client.Create(ctx, report)).To(Succeed())
	report.Status = securityv1alpha1.ImageScanReportStatus{
		ObservedGeneration: report.Generation,
		Platform:           "linux/arm64",
		Summary: &securityv1alpha1.VulnerabilitySummary{
			Critical: 2, High: 7, Medium: 11, Low: 3, Unknown: 1, Fixable: 9, Total: 24,
		},
		Conditions: []metav1.Condition{{
			Type: securityv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
			Reason: securityv1alpha1.ReasonScanSucceeded, Message: "24 vulnerabilities",
			LastTransitionTime: metav1.Now(), ObservedGeneration: report.Generation,
		}},
	}
	g.Expect(env.Client.Status().Update(ctx, report)).To(Succeed())

	out, err := env.RunKubectl(ctx, "get", "imagescanreports", "-A")
	g.Expect(err).NotTo(HaveOccurred())
	rows := table(out)
	g.Expect(rows[0]).To(Equal([]string{
		"NAMESPACE", "NAME", "REPOSITORY", "TAG", "CRITICAL", "HIGH", "MEDIUM", "LOW", "FIXABLE", "READY", "AGE",
	}))
	row := rowOf(rows, "app-0123456789ab")
	g.Expect(row).NotTo(BeNil(), "no row for the report in:\n%s", out)
	g.Expect(row).To(HaveKeyWithValue("NAMESPACE", "team-kubectl"))
	g.Expect(row).To(HaveKeyWithValue("REPOSITORY", "registry.example.com/team/app"))
	g.Expect(row).To(HaveKeyWithValue("TAG", "1.4.2"))
	g.Expect(row).To(HaveKeyWithValue("CRITICAL", "2"))
	g.Expect(row).To(HaveKeyWithValue("HIGH", "7"))
	g.Expect(row).To(HaveKeyWithValue("MEDIUM", "11"))
	g.Expect(row).To(HaveKeyWithValue("LOW", "3"))
	g.Expect(row).To(HaveKeyWithValue("FIXABLE", "9"))
	g.Expect(row).To(HaveKeyWithValue("READY", "True"))

	// The digest, platform and unknown count are in the wide view only.
	out, err = env.RunKubectl(ctx, "get", "isr", "-n", "team-kubectl", "-o", "wide")
	g.Expect(err).NotTo(HaveOccurred())
	rows = table(out)
	g.Expect(rows[0]).To(ContainElements("DIGEST", "PLATFORM", "UNKNOWN"))
	row = rowOf(rows, "app-0123456789ab")
	g.Expect(row).To(HaveKeyWithValue("DIGEST", testDigest))
	g.Expect(row).To(HaveKeyWithValue("PLATFORM", "linux/arm64"))
	g.Expect(row).To(HaveKeyWithValue("UNKNOWN", "1"))
}

func TestKubectlShortNamesAndCategory(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	g.Expect(env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-names"}})).To(Succeed())
	g.Expect(env.Client.Create(ctx, &securityv1alpha1.ImageScanReport{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0123456789ab", Namespace: "team-names"},
		Spec:       securityv1alpha1.ImageScanReportSpec{Image: "registry.example.com/web", Digest: testDigest},
	})).To(Succeed())
	g.Expect(env.Client.Create(ctx, &securityv1alpha1.ImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "team-policy", Namespace: "team-names"},
	})).To(Succeed())
	g.Expect(env.Client.Create(ctx, &securityv1alpha1.ClusterImagePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "names-cluster-policy"},
	})).To(Succeed())

	tests := map[string]struct {
		args  []string
		wants []string
	}{
		"isr":   {args: []string{"get", "isr", "-n", "team-names"}, wants: []string{"web-0123456789ab"}},
		"ipol":  {args: []string{"get", "ipol", "-n", "team-names"}, wants: []string{"team-policy", "ENFORCEMENT", "Audit"}},
		"cipol": {args: []string{"get", "cipol"}, wants: []string{"names-cluster-policy", "ENFORCEMENT"}},
		"imageguard": {
			args: []string{"get", "imageguard", "-n", "team-names"},
			wants: []string{
				"imagescanreport.security.imageguard.dev/web-0123456789ab",
				"imagepolicy.security.imageguard.dev/team-policy",
			},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			out, err := env.RunKubectl(ctx, tt.args...)
			g.Expect(err).NotTo(HaveOccurred())
			for _, want := range tt.wants {
				g.Expect(out).To(ContainSubstring(want))
			}
		})
	}
}
