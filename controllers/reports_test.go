package controllers

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"context"
	"errors"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/scheme"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestReportName(t *testing.T) {
	tests := map[string]struct{ repository, want string }{
		"a plain repository": {"registry.example.com/team/app", "app-0123456789ab"},
		"docker hub":         {"index.docker.io/library/nginx", "nginx-0123456789ab"},
		"odd characters":     {"r.example.com/Team/My_App.v2", "my-app-v2-0123456789ab"},
		"a long name":        {"r.example.com/" + strings.Repeat("x", 80), strings.Repeat("x", 50) + "-0123456789ab"},
		"nothing usable":     {"r.example.com/___", "image-0123456789ab"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			got := ReportName(tt.repository, digest)
			g.Expect(got).To(Equal(tt.want))
			g.Expect(len(got)).To(BeNumerically("<=", 63))
		})
	}
	NewWithT(t).Expect(DigestLabelValue(digest)).To(Equal(strings.TrimPrefix(digest, "sha256:")[:63]))
	// The name taken when another digest's report holds the first: 40 hex, still a DNS label.
	names := ReportNames("r.example.com/"+strings.Repeat("x", 80), digest, "")
	g := NewWithT(t)
	g.Expect(names[0]).To(Equal(strings.Repeat("x", 50) + "-0123456789ab"))
	g.Expect(names[1]).To(Equal(strings.Repeat("x", 22) + "-0123456789abcdef0123456789abcdef01234567"))
	g.Expect(len(names[1])).To(BeNumerically("<=", 63))
}

func TestPlatformReportNames(t *testing.T) {
	tests := map[string]struct{ platform, want string }{
		"the default platform":     {"", "app-0123456789ab"},
		"the default, spelled out": {"linux/amd64", "app-0123456789ab"},
		"arm64":                    {"linux/arm64", "app-0123456789ab-arm64"},
		"a variant":                {"linux/arm/v7", "app-0123456789ab-armv7"},
		"another OS":               {"windows/amd64", "app-0123456789ab-windows-amd64"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			names := ReportNames("registry.example.com/team/app", digest, tt.platform)
			g.Expect(names[0]).To(Equal(tt.want))
			long := ReportNames("r.example.com/"+strings.Repeat("x", 80), digest, tt.platform)
			g.Expect(len(long[0])).To(BeNumerically("<=", 63))
			g.Expect(len(long[1])).To(BeNumerically("<=", 63))
		})
	}
	// Two platforms never share a name.
	NewWithT(t).Expect(ReportNames("r/app", digest, "linux/arm64")).NotTo(ContainElement(ReportName("r/app", digest)))
}

func TestDigestOf(t *testing.T) {
	tests := map[string]struct{ imageID, want string }{
		"docker-pullable":   {"docker-pullable://registry.example.com/app@" + digest, digest},
		"containerd":        {"registry.example.com/app@" + digest, digest},
		"a bare config ID":  {digest, ""},
		"empty":             {"", ""},
		"a malformed hash":  {"registry.example.com/app@sha256:xyz", ""},
		"an upper-case hex": {"r/app@sha256:" + strings.ToUpper(digest[7:]), ""},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(digestOf(tt.imageID)).To(Equal(tt.want))
		})
	}
}

func findings(n int) []scanner.Finding {
	sev := scanner.Severities
	var out []scanner.Finding
	for i := range n {
		f := scanner.Finding{ID: fmt.Sprintf("CVE-2026-%05d", i), Package: "pkg", Severity: sev[i%len(sev)], Title: strings.Repeat("t", 100)}
		if i%3 == 0 {
			f.FixedVersion = "2.0"
		}
		out = append(out, f)
	}
	scanner.SortFindings(out)
	return out
}

func TestApplyScan(t *testing.T) {
	tests := map[string]struct {
		findings     int
		maxBytes     int
		wantOmitted  bool
		wantSummary  securityv1alpha1.VulnerabilitySummary
		wantListSize int
	}{
		"everything fits": {
			findings: 10, maxBytes: 512 << 10, wantListSize: 10,
			wantSummary: securityv1alpha1.VulnerabilitySummary{Critical: 2, High: 2, Medium: 2, Low: 2, Unknown: 2, Fixable: 4, Total: 10},
		},
		"the list is cut": {
			findings: 2000, maxBytes: 64 << 10, wantOmitted: true,
			wantSummary: securityv1alpha1.VulnerabilitySummary{Critical: 400, High: 400, Medium: 400, Low: 400, Unknown: 400, Fixable: 667, Total: 2000},
		},
		"no findings": {findings: 0, maxBytes: 512 << 10},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			report := &securityv1alpha1.ImageScanReport{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns", Generation: 3}}
			at := metav1.NewTime(time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC))
			applyScan(report, ScanStatus{
				Result:         &scanner.Result{OS: scanner.OS{Family: "alpine", Name: "3.22.1"}, Findings: findings(tt.findings), DB: scanner.DBInfo{Digest: "sha256:db"}},
				ScannerVersion: "v0.74.0", ScannedAt: at, AnalyzedAt: at, MaxBytes: tt.maxBytes,
			})
			st := report.Status
			g.Expect(*st.Summary).To(Equal(tt.wantSummary))
			raw, err := json.Marshal(report)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(len(raw)).To(BeNumerically("<=", tt.maxBytes-serverFieldsReserve))
			g.Expect(len(st.Vulnerabilities) + int(st.VulnerabilitiesOmitted)).To(Equal(tt.findings))
			if tt.wantOmitted {
				g.Expect(st.VulnerabilitiesOmitted).To(BeNumerically(">", 0))
				// What is kept is the most severe: the first omitted is never more severe than the last kept.
				g.Expect(st.Vulnerabilities[0].Severity).To(Equal(securityv1alpha1.SeverityCritical))
			} else {
				g.Expect(st.Vulnerabilities).To(HaveLen(tt.wantListSize))
			}
			g.Expect(st.ObservedGeneration).To(BeEquivalentTo(3))
			g.Expect(st.Conditions).To(HaveLen(2))
		})
	}
}

func TestUnchangedFindingsKeepTheScanTime(t *testing.T) {
	g := NewWithT(t)
	analyzed := metav1.NewTime(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	// The report controller applies a scan to the report as it read it.
	scan := func(before *securityv1alpha1.ImageScanReport, at time.Time, db string) *securityv1alpha1.ImageScanReport {
		r := before.DeepCopy()
		applyScan(r, ScanStatus{
			Result:    &scanner.Result{Findings: findings(3), DB: scanner.DBInfo{Digest: db}},
			ScannedAt: metav1.NewTime(at), AnalyzedAt: analyzed, MaxBytes: 512 << 10,
		})
		return r
	}
	now := time.Now()
	empty := &securityv1alpha1.ImageScanReport{}
	old := scan(empty, now, "sha256:old")
	// A re-match against a newer DB that finds the same keeps the old scan time and DB: no write.
	same := scan(old, now.Add(time.Hour), "sha256:new")
	keepScanTimeWhenUnchanged(old, same, false)
	g.Expect(same.Status).To(Equal(old.Status))
	// Other findings are written with the new scan time and DB.
	changed := scan(old, now.Add(time.Hour), "sha256:new")
	changed.Status.Summary.Total++
	keepScanTimeWhenUnchanged(old, changed, false)
	g.Expect(changed.Status.VulnerabilityDB.Digest).To(Equal("sha256:new"))
	// The first scan is always written.
	first := scan(empty, now, "sha256:new")
	keepScanTimeWhenUnchanged(empty, first, false)
	g.Expect(first.Status.LastScanTime).NotTo(BeNil())
	g.Expect(first.Status.VulnerabilityDB.Digest).To(Equal("sha256:new"))
}

// TestFailedStatusWriteIsRetried: a scan that fails for good returns a terminal error, but when
// recording it fails too, the write's error is returned, not terminal, so the workqueue retries.
func TestFailedStatusWriteIsRetried(t *testing.T) {
	g := NewWithT(t)
	report := &securityv1alpha1.ImageScanReport{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns", Generation: 1}}
	writes := 0
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(report).WithStatusSubresource(report).
		WithInterceptorFuncs(interceptor.Funcs{SubResourcePatch: func(context.Context, client.Client, string, client.Object, client.Patch, ...client.SubResourcePatchOption) error {
			writes++
			return errors.New("etcd is unavailable")
		}}).Build()
	r := &ImageScanReportReconciler{Client: c}
	before := report.DeepCopy()
	cause := registry.Errorf(registry.KindUnsupported, "a layer path leaves the root")
	g.Expect(setScanFailed(report, cause)).To(BeTrue())
	_, err := r.finish(context.Background(), before, report, ctrl.Result{}, reconcile.TerminalError(cause))
	g.Expect(writes).To(Equal(1))
	g.Expect(err).To(MatchError(ContainSubstring("etcd is unavailable")))
	g.Expect(err).To(MatchError(ContainSubstring("a layer path leaves the root")))
	g.Expect(errors.Is(err, reconcile.TerminalError(nil))).To(BeFalse())

	// Written, the terminal cause is returned as it is.
	c = fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(before).WithStatusSubresource(before).Build()
	r.Client = c
	_, err = r.finish(context.Background(), before, report, ctrl.Result{}, reconcile.TerminalError(cause))
	g.Expect(errors.Is(err, reconcile.TerminalError(nil))).To(BeTrue())
}

func TestScanConditions(t *testing.T) {
	tests := map[string]struct {
		set             func(*securityv1alpha1.ImageScanReport)
		wantReady       string
		wantReconciling string // reason, "" when absent
		wantStalled     bool
	}{
		"first scan pending": {set: setScanPending, wantReady: securityv1alpha1.ReasonScanPending, wantReconciling: securityv1alpha1.ReasonScanPending},
		"no DB yet":          {set: setDatabaseUnavailable, wantReady: securityv1alpha1.ReasonDatabaseUnavailable, wantReconciling: securityv1alpha1.ReasonDatabaseUnavailable},
		"retried": {set: func(r *securityv1alpha1.ImageScanReport) {
			setScanFailed(r, registry.Errorf(registry.KindUnauthorized, "401"))
		}, wantReady: securityv1alpha1.ReasonUnauthorized, wantReconciling: securityv1alpha1.ReasonUnauthorized},
		"failed for good": {set: func(r *securityv1alpha1.ImageScanReport) {
			setScanFailed(r, registry.Errorf(registry.KindUnsupported, "bomb"))
		}, wantReady: securityv1alpha1.ReasonUnsupportedImage, wantStalled: true},
		"registry unavailable": {set: func(r *securityv1alpha1.ImageScanReport) { setScanFailed(r, errors.New("connection reset")) }, wantReady: securityv1alpha1.ReasonScanFailed, wantReconciling: securityv1alpha1.ReasonScanFailed},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			r := &securityv1alpha1.ImageScanReport{ObjectMeta: metav1.ObjectMeta{Generation: 2}}
			setScanPending(r) // what every report starts with
			tt.set(r)
			ready := meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionReady)
			g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(ready.Reason).To(Equal(tt.wantReady))
			g.Expect(ready.ObservedGeneration).To(BeEquivalentTo(2))
			reconciling := meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionReconciling)
			if tt.wantReconciling == "" {
				g.Expect(reconciling).To(BeNil())
			} else {
				g.Expect(reconciling.Reason).To(Equal(tt.wantReconciling))
			}
			g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionStalled)).To(Equal(tt.wantStalled))
		})
	}
}
