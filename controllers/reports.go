// Package controllers holds ImageGuard's reconcilers, one per file: the pod controller keeps one
// ImageScanReport per namespace and digest that pods run; the report controller fills it from the
// scanner and re-matches it after each DB update; the policy controllers judge the workloads each
// policy matches and the PolicyReport controller writes the same verdicts per namespace; the
// admission setup serves the webhooks from the same gatherer (internal/workload). Every status is
// written by one helper (status.go).
package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
)

const (
	// DigestLabel holds the first 63 hex characters of a report's digest, to find reports by digest.
	DigestLabel = "security.imageguard.dev/digest"
	// UnusedSinceAnnotation records when the pod controller saw a report unused, for retention.
	UnusedSinceAnnotation = "security.imageguard.dev/unused-since"
)

var nonLabelChars = regexp.MustCompile(`[^a-z0-9-]+`)

// ReportName returns the name of the report of digest on the default platform: the repository's
// last path element, a dash and the digest's first 12 hex characters, cut to fit a DNS label. When
// another digest's report holds that name (the 12 hex are the same, by chance or made so), the
// report takes the next of ReportNames.
func ReportName(repository, digest string) string { return reportName(repository, digest, "", 12) }

// ReportNames returns the names the report of digest on platform may have, in the order they are
// tried: the 12-hex name, then one with 40 hex of the digest (160 bits: no image can be made to
// collide). A platform other than the default adds its architecture (and its OS when not
// linux): app-0123456789ab-arm64.
func ReportNames(repository, digest, platform string) []string {
	return []string{reportName(repository, digest, platform, 12), reportName(repository, digest, platform, 40)}
}

func reportName(repository, digest, platform string, hexLen int) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	if len(hex) > hexLen {
		hex = hex[:hexLen]
	}
	if suffix := platformSuffix(platform); suffix != "" {
		hex += "-" + suffix
	}
	base := repository[strings.LastIndex(repository, "/")+1:]
	base = strings.Trim(nonLabelChars.ReplaceAllString(strings.ToLower(base), "-"), "-")
	if room := 63 - len(hex) - 1; len(base) > room {
		base = strings.TrimRight(base[:room], "-")
	}
	if base == "" {
		return "image-" + hex
	}
	return base + "-" + hex
}

// platformSuffix names platform in a report name: "" for the default, else its architecture and
// variant (arm64, armv7), after its OS when that is not linux (windows-amd64); at most 20
// characters.
func platformSuffix(platform string) string {
	if platform == "" || platform == policy.DefaultPlatform {
		return ""
	}
	parts := strings.SplitN(platform, "/", 3)
	suffix := strings.Join(parts[1:], "")
	if parts[0] != "linux" {
		suffix = parts[0] + "-" + suffix
	}
	suffix = strings.Trim(nonLabelChars.ReplaceAllString(strings.ToLower(suffix), "-"), "-")
	if len(suffix) > 20 {
		suffix = strings.TrimRight(suffix[:20], "-")
	}
	return suffix
}

// DigestLabelValue returns the value of DigestLabel for digest.
func DigestLabelValue(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	if len(hex) > 63 {
		hex = hex[:63]
	}
	return hex
}

// reportFor returns the report of spec's digest and platform in namespace, creating it when there
// is none: the report under the first of ReportNames that is free or holds this digest and
// platform. A name held by another digest's (or platform's) report is passed over, so that no pod can keep an image's report from existing
// by running a look-alike digest first. live reads what the cache may not show yet (a report an
// earlier reconcile made a moment ago). created says whether this call made it.
func reportFor(ctx context.Context, c client.Client, live client.Reader, namespace string, spec securityv1alpha1.ImageScanReportSpec) (report *securityv1alpha1.ImageScanReport, created bool, err error) {
	for _, name := range ReportNames(spec.Image, spec.Digest, spec.Platform) {
		key := client.ObjectKey{Namespace: namespace, Name: name}
		report = &securityv1alpha1.ImageScanReport{}
		err := c.Get(ctx, key, report)
		if apierrors.IsNotFound(err) {
			report = &securityv1alpha1.ImageScanReport{
				ObjectMeta: metav1.ObjectMeta{
					Name: name, Namespace: namespace,
					Labels: map[string]string{DigestLabel: DigestLabelValue(spec.Digest)},
				},
				Spec: spec,
			}
			if err = c.Create(ctx, report); err == nil {
				return report, true, nil
			}
			if !apierrors.IsAlreadyExists(err) {
				return nil, false, err
			}
			err = live.Get(ctx, key, report)
		}
		if err != nil {
			return nil, false, err
		}
		if report.Spec.Digest == spec.Digest && report.Spec.Platform == spec.Platform {
			return report, false, nil
		}
	}
	return nil, false, fmt.Errorf("every name of the report of %s@%s (%s) in %s is held by another digest's or platform's report", spec.Image, spec.Digest, policy.PlatformName(spec.Platform), namespace)
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
	st.Platform = res.Platform
	st.ImageDigest, st.IndexPlatforms = res.ImageDigest, res.IndexPlatforms
	st.JavaArchivesNotAnalysed = int32(min(res.JavaArchives, math.MaxInt32))
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
	// No DB date in the message: a re-match that finds the same must not change the status.
	if res.JavaArchives > 0 {
		// Not a silent gap: the findings lack the Java archives' packages until a Java DB is
		// loaded, when the image is analysed again.
		gap := fmt.Sprintf("%d Java archives (jar, war, ear, par) were not analysed: no Java DB is loaded yet (--java-db-repository, --java-db-path); the image is analysed again once one is", res.JavaArchives)
		setCondition(report, securityv1alpha1.ConditionScanned, metav1.ConditionTrue, securityv1alpha1.ReasonJavaDBUnavailable,
			"the image's packages were matched against the vulnerability DB; "+gap)
		setCondition(report, securityv1alpha1.ConditionReady, metav1.ConditionTrue, securityv1alpha1.ReasonJavaDBUnavailable,
			summaryMessage(st.Summary)+"; "+gap)
	} else {
		setCondition(report, securityv1alpha1.ConditionScanned, metav1.ConditionTrue, securityv1alpha1.ReasonScanSucceeded,
			"the image's packages were matched against the vulnerability DB")
		setCondition(report, securityv1alpha1.ConditionReady, metav1.ConditionTrue, securityv1alpha1.ReasonScanSucceeded,
			summaryMessage(st.Summary))
	}
	removeCondition(report, securityv1alpha1.ConditionReconciling)
	removeCondition(report, securityv1alpha1.ConditionStalled)
	// Last, so that everything else in the object is measured.
	fitInto(report, s.MaxBytes)
}

// keepScanTimeWhenUnchanged keeps the scan time and DB of before in report when the scan found
// what before already says, unless they are due for a refresh: a re-match that finds the same
// writes nothing.
func keepScanTimeWhenUnchanged(before, report *securityv1alpha1.ImageScanReport, refreshDue bool) {
	if refreshDue || before.Status.VulnerabilityDB == nil || before.Status.LastScanTime == nil {
		return
	}
	candidate := report.Status.DeepCopy()
	candidate.LastScanTime, candidate.VulnerabilityDB = before.Status.LastScanTime, before.Status.VulnerabilityDB
	// Semantic: a time read back from the API server is in another location than ours.
	if equality.Semantic.DeepEqual(candidate, &before.Status) {
		report.Status = *candidate
	}
}

// setScanPending says the report waits for its first scan.
func setScanPending(report *securityv1alpha1.ImageScanReport) {
	const msg = "waiting for the first scan of the image"
	setCondition(report, securityv1alpha1.ConditionReconciling, metav1.ConditionTrue, securityv1alpha1.ReasonScanPending, msg)
	setCondition(report, securityv1alpha1.ConditionReady, metav1.ConditionFalse, securityv1alpha1.ReasonScanPending, msg)
}

// setDatabaseUnavailable says the report waits for the vulnerability DB.
func setDatabaseUnavailable(report *securityv1alpha1.ImageScanReport) {
	const msg = "no vulnerability DB is loaded yet"
	setCondition(report, securityv1alpha1.ConditionReconciling, metav1.ConditionTrue, securityv1alpha1.ReasonDatabaseUnavailable, msg)
	setCondition(report, securityv1alpha1.ConditionReady, metav1.ConditionFalse, securityv1alpha1.ReasonDatabaseUnavailable, msg)
}

// setScanFailed records a failed scan: Scanned and Ready False with the cause as reason, earlier
// findings kept. An image that can never be scanned, or whose analyses crashed the controller, is
// Stalled; anything else is Reconciling, retried with backoff. It reports whether the failure is
// terminal (not retried before the rescan interval).
func setScanFailed(report *securityv1alpha1.ImageScanReport, err error) bool {
	kind := registry.KindOf(err)
	reason := string(kind)
	if kind == registry.KindUnavailable {
		reason = securityv1alpha1.ReasonScanFailed
	}
	setCondition(report, securityv1alpha1.ConditionScanned, metav1.ConditionFalse, reason, err.Error())
	setCondition(report, securityv1alpha1.ConditionReady, metav1.ConditionFalse, reason, err.Error())
	if kind == registry.KindUnsupported || kind == registry.KindAnalysisCrashed {
		setCondition(report, securityv1alpha1.ConditionStalled, metav1.ConditionTrue, reason, err.Error())
		removeCondition(report, securityv1alpha1.ConditionReconciling)
		return true
	}
	setCondition(report, securityv1alpha1.ConditionReconciling, metav1.ConditionTrue, reason, "the scan is retried with backoff: "+err.Error())
	removeCondition(report, securityv1alpha1.ConditionStalled)
	return false
}

// summarize counts findings by severity; fixable ones have a fixed version.
func summarize(findings []scanner.Finding) *securityv1alpha1.VulnerabilitySummary {
	s := &securityv1alpha1.VulnerabilitySummary{Total: int32(len(findings))}
	for _, f := range findings {
		s.Add(securityv1alpha1.Severity(f.Severity), 1)
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
