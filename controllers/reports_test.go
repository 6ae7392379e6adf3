package controllers

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/scanner"
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

func TestParseImage(t *testing.T) {
	tests := map[string]struct {
		image   string
		want    policy.Image
		wantErr bool
	}{
		"docker hub short":    {image: "nginx", want: policy.Image{Repository: "index.docker.io/library/nginx", Tag: "latest"}},
		"a tag":               {image: "registry.example.com:5000/team/app:1.2", want: policy.Image{Repository: "registry.example.com:5000/team/app", Tag: "1.2"}},
		"a digest":            {image: "registry.example.com/app@" + digest, want: policy.Image{Repository: "registry.example.com/app", Digest: digest}},
		"a tag and a digest":  {image: "registry.example.com/app:1.2@" + digest, want: policy.Image{Repository: "registry.example.com/app", Tag: "1.2", Digest: digest}},
		"a malformed one":     {image: "UPPER/Case::", wantErr: true},
		"a port, no tag, dig": {image: "localhost:5000/app@" + digest, want: policy.Image{Repository: "localhost:5000/app", Digest: digest}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := parseImage(tt.image)
			if tt.wantErr {
				g.Expect(err).To(HaveOccurred())
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tt.want))
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

func TestStatusChangedIgnoresScanTimes(t *testing.T) {
	g := NewWithT(t)
	analyzed := metav1.NewTime(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	mk := func(at time.Time, db string) *securityv1alpha1.ImageScanReportStatus {
		r := &securityv1alpha1.ImageScanReport{}
		applyScan(r, ScanStatus{
			Result:    &scanner.Result{Findings: findings(3), DB: scanner.DBInfo{Digest: db}},
			ScannedAt: metav1.NewTime(at), AnalyzedAt: analyzed, MaxBytes: 512 << 10,
		})
		return &r.Status
	}
	now := time.Now()
	old := mk(now, "sha256:old")
	g.Expect(statusChanged(old, mk(now.Add(time.Hour), "sha256:new"))).To(BeFalse())
	changed := mk(now, "sha256:new")
	changed.Summary.Total++
	g.Expect(statusChanged(old, changed)).To(BeTrue())
	g.Expect(statusChanged(&securityv1alpha1.ImageScanReportStatus{}, old)).To(BeTrue())
}
