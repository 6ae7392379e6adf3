// Package controllers holds ImageGuard's reconcilers, one per file: pods to reports, reports to
// findings.
package controllers

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/scanner"
)

const (
	// DigestLabel holds the first 63 hex characters of a report's digest, to find reports by digest.
	DigestLabel = "security.imageguard.dev/digest"
	// UnusedSinceAnnotation records when the pod controller saw a report unused, for retention.
	UnusedSinceAnnotation = "security.imageguard.dev/unused-since"
)

var nonLabelChars = regexp.MustCompile(`[^a-z0-9-]+`)

// ReportName returns the name of the report of digest: the repository's last path element, a
// dash and the digest's first 12 hex characters, cut to fit a DNS label.
func ReportName(repository, digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	if len(hex) > 12 {
		hex = hex[:12]
	}
	base := repository[strings.LastIndex(repository, "/")+1:]
	base = strings.Trim(nonLabelChars.ReplaceAllString(strings.ToLower(base), "-"), "-")
	if max := 63 - len(hex) - 1; len(base) > max {
		base = strings.TrimRight(base[:max], "-")
	}
	if base == "" {
		return "image-" + hex
	}
	return base + "-" + hex
}

// DigestLabelValue returns the value of DigestLabel for digest.
func DigestLabelValue(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	if len(hex) > 63 {
		hex = hex[:63]
	}
	return hex
}

// ScanStatus is what the report controller writes for a successful scan.
type ScanStatus struct {
	Result         *scanner.Result
	ScannerVersion string
	ScannedAt      metav1.Time
	AnalyzedAt     metav1.Time
	MaxBytes       int
}

// applyScan sets the scan fields of report's status from a successful scan: exact summary, the
// findings list cut so the whole object stays under MaxBytes, highest severity first.
func applyScan(report *securityv1alpha1.ImageScanReport, s ScanStatus) {
	st := &report.Status
	res := s.Result
	st.OS = &securityv1alpha1.OperatingSystem{Family: res.OS.Family, Name: res.OS.Name, EOSL: res.OS.EOSL}
	st.Scanner = &securityv1alpha1.Scanner{Name: "Trivy", Version: s.ScannerVersion}
	updated := metav1.NewTime(res.DB.UpdatedAt)
	st.VulnerabilityDB = &securityv1alpha1.VulnerabilityDB{UpdatedAt: &updated, Digest: res.DB.Digest}
	st.Summary = summarize(res.Findings)
	st.Vulnerabilities = make([]securityv1alpha1.Vulnerability, 0, len(res.Findings))
	for _, f := range res.Findings {
		st.Vulnerabilities = append(st.Vulnerabilities, securityv1alpha1.Vulnerability{
			ID: f.ID, Package: f.Package, InstalledVersion: f.InstalledVersion, FixedVersion: f.FixedVersion,
			Severity: securityv1alpha1.Severity(f.Severity), Status: f.Status, Title: f.Title,
			PrimaryURL: f.PrimaryURL, Target: f.Target, PackageType: f.PackageType,
		})
	}
	st.VulnerabilitiesOmitted = 0
	st.LastScanTime = &s.ScannedAt
	st.LastAnalysisTime = &s.AnalyzedAt
	st.ObservedGeneration = report.Generation
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: securityv1alpha1.ConditionScanned, Status: metav1.ConditionTrue,
		Reason: securityv1alpha1.ReasonScanSucceeded, ObservedGeneration: report.Generation,
		// No DB date here: a re-match that finds the same must not change the status.
		Message: "the image's packages were matched against the vulnerability DB",
	})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: securityv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: securityv1alpha1.ReasonScanSucceeded, ObservedGeneration: report.Generation,
		Message: summaryMessage(st.Summary),
	})
	meta.RemoveStatusCondition(&st.Conditions, securityv1alpha1.ConditionReconciling)
	meta.RemoveStatusCondition(&st.Conditions, securityv1alpha1.ConditionStalled)
	// Last, so that everything else in the object is measured.
	fitInto(report, s.MaxBytes)
}

// summarize counts findings by severity; fixable ones have a fixed version.
func summarize(findings []scanner.Finding) *securityv1alpha1.VulnerabilitySummary {
	s := &securityv1alpha1.VulnerabilitySummary{Total: int32(len(findings))}
	for _, f := range findings {
		switch securityv1alpha1.Severity(f.Severity) {
		case securityv1alpha1.SeverityCritical:
			s.Critical++
		case securityv1alpha1.SeverityHigh:
			s.High++
		case securityv1alpha1.SeverityMedium:
			s.Medium++
		case securityv1alpha1.SeverityLow:
			s.Low++
		default:
			s.Unknown++
		}
		if f.FixedVersion != "" {
			s.Fixable++
		}
	}
	return s
}

func summaryMessage(s *securityv1alpha1.VulnerabilitySummary) string {
	return fmt.Sprintf("%d vulnerabilities: %d critical, %d high, %d medium, %d low, %d unknown; %d fixable",
		s.Total, s.Critical, s.High, s.Medium, s.Low, s.Unknown, s.Fixable)
}

// serverFieldsReserve is kept free in a report for what the API server adds to the object we
// measure: managed fields (our cache drops them), resource version, UID, timestamps.
const serverFieldsReserve = 4 << 10

// fitInto cuts report's vulnerability list (sorted most severe first) until the encoded object is
// at most maxBytes, counting what was cut. The API server's own limit is never relied on.
func fitInto(report *securityv1alpha1.ImageScanReport, maxBytes int) {
	if maxBytes <= 0 {
		return
	}
	budget := max(maxBytes-serverFieldsReserve, maxBytes/2)
	size := func() int {
		measured := *report
		measured.ManagedFields = nil
		raw, err := json.Marshal(&measured)
		if err != nil {
			return budget + 1
		}
		return len(raw)
	}
	st := &report.Status
	total := len(st.Vulnerabilities)
	if size() <= budget {
		return
	}
	// Binary search for the longest prefix that fits.
	all := st.Vulnerabilities
	lo, hi := 0, total
	for lo < hi {
		mid := (lo + hi + 1) / 2
		st.Vulnerabilities = all[:mid]
		st.VulnerabilitiesOmitted = int32(total - mid)
		if size() <= budget {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	st.Vulnerabilities = all[:lo]
	st.VulnerabilitiesOmitted = int32(total - lo)
}
