package policy

import (
	"regexp"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func vuln(id string, sev securityv1alpha1.Severity, fixed string) securityv1alpha1.Vulnerability {
	return securityv1alpha1.Vulnerability{ID: id, Package: "p", Severity: sev, FixedVersion: fixed}
}

// scanned is an image with a report of the given findings, scanned an hour ago.
func scanned(repo string, vulns ...securityv1alpha1.Vulnerability) Image {
	r := &Report{ScannedAt: now.Add(-time.Hour), Vulnerabilities: vulns}
	for _, v := range vulns {
		r.Summary.Add(v.Severity, 1)
		r.Summary.Total++
	}
	return Image{Container: "app", Repository: repo, Tag: "1.0", Report: r}
}

func evaluate(t *testing.T, rules securityv1alpha1.PolicyRules, img Image, at time.Time) Verdict {
	t.Helper()
	p, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	return p.Evaluate([]Image{img}, at)
}

func TestGlobs(t *testing.T) {
	tests := []struct {
		glob, repo, tag string
		want            bool
	}{
		{"registry.example.com/*", "registry.example.com/app", "", true},
		{"registry.example.com/*", "registry.example.com.evil.io/x", "", false},
		{"registry.example.com/*", "registry.example.com/team/app", "", false},
		{"registry.example.com/**", "registry.example.com/team/app", "", true},
		{"registry.example.com/**", "registry.example.com.evil.io/team/app", "", false},
		{"*.dkr.ecr.eu-west-1.amazonaws.com/team/*", "1234.dkr.ecr.eu-west-1.amazonaws.com/team/app", "", true},
		{"*.dkr.ecr.eu-west-1.amazonaws.com/team/*", "evil.io/x.dkr.ecr.eu-west-1.amazonaws.com/team/app", "", false},
		{"127.0.0.1:*/*", "127.0.0.1:5001/app", "", true},
		{"registry.example.com/app:1.*", "registry.example.com/app", "1.4", true},
		{"registry.example.com/app:1.*", "registry.example.com/app", "2.0", false},
		{"registry.example.com/app", "registry.example.com/app-evil", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.glob+" "+tt.repo, func(t *testing.T) {
			g := NewWithT(t)
			glob, err := CompileGlob(tt.glob)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(glob.MatchImage(Image{Repository: tt.repo, Tag: tt.tag})).To(Equal(tt.want))
		})
	}
}

func TestCheckRegistries(t *testing.T) {
	rules := securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/*"}}}
	tests := map[string]struct {
		repo       string
		wantFailed bool
	}{
		"trusted":          {repo: "registry.example.com/app"},
		"a look-alike":     {repo: "registry.example.com.evil.io/app", wantFailed: true},
		"docker hub":       {repo: "index.docker.io/library/nginx", wantFailed: true},
		"a deeper path":    {repo: "registry.example.com/team/app", wantFailed: true},
		"another registry": {repo: "ghcr.io/x/app", wantFailed: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			v := evaluate(t, rules, scanned(tt.repo), now)
			g.Expect(v.Results).To(HaveLen(1))
			g.Expect(v.Results[0].Failed).To(Equal(tt.wantFailed))
			if tt.wantFailed {
				g.Expect(v.Results[0].Reason).To(Equal(ReasonUntrustedRegistry))
				g.Expect(v.Results[0].Message).To(ContainSubstring(tt.repo))
			}
		})
	}
}

func TestCheckTags(t *testing.T) {
	tests := map[string]struct {
		rule       securityv1alpha1.TagRule
		tag        string
		digest     string
		wantReason string
	}{
		"latest refused":             {rule: securityv1alpha1.TagRule{DisallowLatest: true}, tag: "latest", wantReason: ReasonLatestTag},
		"no tag counts as latest":    {rule: securityv1alpha1.TagRule{DisallowLatest: true}, wantReason: ReasonLatestTag},
		"a version tag passes":       {rule: securityv1alpha1.TagRule{DisallowLatest: true}, tag: "1.2", wantReason: ReasonPassed},
		"a digest alone passes":      {rule: securityv1alpha1.TagRule{DisallowLatest: true}, digest: "sha256:ab", wantReason: ReasonPassed},
		"latest pinned by digest":    {rule: securityv1alpha1.TagRule{DisallowLatest: true}, tag: "latest", digest: "sha256:ab", wantReason: ReasonLatestTag},
		"digest required, tag only":  {rule: securityv1alpha1.TagRule{RequireDigest: true}, tag: "1.2", wantReason: ReasonDigestRequired},
		"digest required, digest ok": {rule: securityv1alpha1.TagRule{RequireDigest: true}, tag: "1.2", digest: "sha256:ab", wantReason: ReasonPassed},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			img := scanned("r/app")
			img.Tag, img.Digest = tt.tag, tt.digest
			v := evaluate(t, securityv1alpha1.PolicyRules{Tags: &tt.rule}, img, now)
			g.Expect(v.Results).To(HaveLen(1))
			g.Expect(v.Results[0].Reason).To(Equal(tt.wantReason))
			g.Expect(v.Results[0].Failed).To(Equal(tt.wantReason != ReasonPassed))
		})
	}
}

func TestCheckFreshness(t *testing.T) {
	rules := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxScanAge: &metav1.Duration{Duration: 24 * time.Hour}}}
	matched := func(builtAgo time.Duration, inUse bool) *Report {
		return &Report{ScannedAt: now.Add(-30 * 24 * time.Hour), MatchedDB: MatchedDB{BuiltAt: now.Add(-builtAgo), InUse: inUse}}
	}
	stale := matched(time.Hour, true)
	stale.MatchedDB.Stale = "the DB in use was built 4d ago, more than --db-max-age 72h"
	failed := matched(time.Hour, true)
	failed.MatchFailed = "the inventory is lost and the registry answers 503"
	tests := map[string]struct {
		report      *Report
		wantReason  string
		wantMessage string
	}{
		"never scanned": {report: nil, wantReason: ReasonNotScanned},
		// The last write of the report is a month old: what counts is the DB it was matched against.
		"matched against a DB built an hour ago": {report: matched(time.Hour, true), wantReason: ReasonPassed},
		"exactly at the age":                     {report: matched(24*time.Hour, true), wantReason: ReasonPassed},
		"the DB in use is a second too old": {report: matched(24*time.Hour+time.Second, true), wantReason: ReasonDatabaseStale,
			wantMessage: "the newest DB ImageGuard has, built at 2026-"},
		"matched against an older DB than the one in use": {report: matched(25*time.Hour, false), wantReason: ReasonScanTooOld,
			wantMessage: "a newer DB is in use"},
		"the DB in use is stale": {report: stale, wantReason: ReasonDatabaseStale, wantMessage: "--db-max-age"},
		"the last match failed":  {report: failed, wantReason: ReasonScanFailed, wantMessage: "registry answers 503"},
		"matched DB unknown":     {report: &Report{ScannedAt: now}, wantReason: ReasonNotScanned},
		"matched against an older DB while the one in use is stale": {report: &Report{MatchedDB: MatchedDB{BuiltAt: now.Add(-time.Hour), Stale: "old"}}, wantReason: ReasonDatabaseStale},
		"status only, DB fresh":   {report: ReportOf(reportWithDB(now.Add(-2 * time.Hour))), wantReason: ReasonPassed},
		"status only, DB too old": {report: ReportOf(reportWithDB(now.Add(-48 * time.Hour))), wantReason: ReasonScanTooOld},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			v := evaluate(t, rules, Image{Repository: "r/app", Tag: "1", Report: tt.report}, now)
			g.Expect(v.Results).To(HaveLen(1))
			g.Expect(v.Results[0].Reason).To(Equal(tt.wantReason), v.Results[0].Message)
			g.Expect(v.Results[0].Message).To(ContainSubstring(tt.wantMessage))
			if tt.wantReason == ReasonPassed {
				g.Expect(v.NextChange).To(Equal(tt.report.MatchedDB.BuiltAt.Add(24 * time.Hour)))
			}
		})
	}
}

func TestCheckAnalysisAge(t *testing.T) {
	week := &metav1.Duration{Duration: 7 * 24 * time.Hour}
	analysed := func(ago time.Duration) *Report {
		return &Report{ScannedAt: now, MatchedDB: MatchedDB{BuiltAt: now.Add(-time.Hour), InUse: true}, AnalyzedAt: now.Add(-ago)}
	}
	tests := map[string]struct {
		rule       securityv1alpha1.VulnerabilityRule
		report     *Report
		wantReason string
		wantNext   time.Time
	}{
		"analysed a day ago":            {rule: securityv1alpha1.VulnerabilityRule{MaxAnalysisAge: week}, report: analysed(24 * time.Hour), wantReason: ReasonPassed, wantNext: now.Add(6 * 24 * time.Hour)},
		"analysed more than a week ago": {rule: securityv1alpha1.VulnerabilityRule{MaxAnalysisAge: week}, report: analysed(8 * 24 * time.Hour), wantReason: ReasonAnalysisTooOld},
		"never analysed":                {rule: securityv1alpha1.VulnerabilityRule{MaxAnalysisAge: week}, report: &Report{ScannedAt: now}, wantReason: ReasonNotScanned},
		// Both limits: the earlier of the two moments the verdict turns.
		"both, the DB turns first": {rule: securityv1alpha1.VulnerabilityRule{MaxAnalysisAge: week, MaxScanAge: &metav1.Duration{Duration: 24 * time.Hour}},
			report: analysed(24 * time.Hour), wantReason: ReasonPassed, wantNext: now.Add(23 * time.Hour)},
		"both, the analysis fails": {rule: securityv1alpha1.VulnerabilityRule{MaxAnalysisAge: week, MaxScanAge: &metav1.Duration{Duration: 24 * time.Hour}},
			report: analysed(8 * 24 * time.Hour), wantReason: ReasonAnalysisTooOld},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			rules := securityv1alpha1.PolicyRules{Vulnerabilities: &tt.rule}
			p, err := Compile(rules)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(p.MaxAnalysisAge()).To(Equal(7 * 24 * time.Hour))
			v := evaluate(t, rules, Image{Repository: "r/app", Tag: "1", Report: tt.report}, now)
			g.Expect(v.Results).To(HaveLen(1))
			g.Expect(v.Results[0].Reason).To(Equal(tt.wantReason), v.Results[0].Message)
			g.Expect(v.NextChange).To(Equal(tt.wantNext))
		})
	}
}

// reportWithDB is a scanned report whose status says it was matched against a DB built at builtAt.
func reportWithDB(builtAt time.Time) *securityv1alpha1.ImageScanReport {
	return &securityv1alpha1.ImageScanReport{Status: securityv1alpha1.ImageScanReportStatus{
		Summary: &securityv1alpha1.VulnerabilitySummary{}, LastScanTime: &metav1.Time{Time: builtAt},
		VulnerabilityDB: &securityv1alpha1.VulnerabilityDB{UpdatedAt: &metav1.Time{Time: builtAt}, Digest: "sha256:1"},
	}}
}

func TestCheckVulnerabilities(t *testing.T) {
	findings := []securityv1alpha1.Vulnerability{
		vuln("CVE-1", securityv1alpha1.SeverityCritical, "1.1"),
		vuln("CVE-2", securityv1alpha1.SeverityCritical, ""),
		vuln("CVE-3", securityv1alpha1.SeverityHigh, "2.0"),
		vuln("CVE-4", securityv1alpha1.SeverityLow, ""),
	}
	tests := map[string]struct {
		rule        securityv1alpha1.VulnerabilityRule
		image       Image
		wantFailed  bool
		wantMessage string
	}{
		"no critical: two":         {rule: securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}, image: scanned("r/a", findings...), wantFailed: true, wantMessage: "2 critical (max 0)"},
		"no fixable critical: one": {rule: securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0), FixableOnly: true}, image: scanned("r/a", findings...), wantFailed: true, wantMessage: "1 fixable critical (max 0)"},
		"within limits":            {rule: securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](2), MaxHigh: ptr.To[int32](1)}, image: scanned("r/a", findings...), wantMessage: "within limits"},
		"several over":             {rule: securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](1), MaxHigh: ptr.To[int32](0), MaxLow: ptr.To[int32](0)}, image: scanned("r/a", findings...), wantFailed: true, wantMessage: "2 critical (max 1), 1 high (max 0), 1 low (max 0)"},
		"not scanned":              {rule: securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}, image: Image{Repository: "r/a"}, wantFailed: true, wantMessage: "not been scanned"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			v := evaluate(t, securityv1alpha1.PolicyRules{Vulnerabilities: &tt.rule}, tt.image, now)
			g.Expect(v.Results).To(HaveLen(1))
			g.Expect(v.Results[0].Failed).To(Equal(tt.wantFailed))
			g.Expect(v.Results[0].Message).To(ContainSubstring(tt.wantMessage))
			g.Expect(v.Compliant()).To(Equal(!tt.wantFailed))
		})
	}
}

func TestEveryPlatformIsJudged(t *testing.T) {
	rule := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}
	clean := scanned("r/a")
	arm := scanned("r/a", vuln("CVE-1", securityv1alpha1.SeverityCritical, "1.1")).Report
	arm.Platform = "linux/arm64"

	g := NewWithT(t)
	// The default platform's report passes, the arm64 one of the same index digest does not.
	img := clean
	img.Report = &Report{ScannedAt: clean.Report.ScannedAt, Others: []*Report{arm}}
	v := evaluate(t, rule, img, now)
	g.Expect(v.Compliant()).To(BeFalse())
	g.Expect(v.Results[0].Message).To(Equal("on linux/arm64: 1 critical (max 0)"))

	// The other way round: the default platform's failure names it.
	img.Report = &Report{ScannedAt: arm.ScannedAt, Summary: arm.Summary, Vulnerabilities: arm.Vulnerabilities, Others: []*Report{{ScannedAt: now.Add(-time.Hour), Platform: "linux/arm64"}}}
	v = evaluate(t, rule, img, now)
	g.Expect(v.Compliant()).To(BeFalse())
	g.Expect(v.Results[0].Message).To(Equal("on linux/amd64: 1 critical (max 0)"))

	// Both clean: a plain pass.
	img.Report = &Report{ScannedAt: now.Add(-time.Hour), Others: []*Report{{ScannedAt: now.Add(-time.Hour), Platform: "linux/arm64"}}}
	g.Expect(evaluate(t, rule, img, now).Compliant()).To(BeTrue())
}

// A report whose Java archives were not analysed yet can fail the vulnerability rule on what is
// known, never pass it: within the limits it is NotScanned; a partial report on another
// platform too. ReportOf reads the reason off the report.
func TestAPartialReportNeverPasses(t *testing.T) {
	g := NewWithT(t)
	rule := securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}
	img := scanned("r/a")
	img.Report.Partial = "its Java archives were not analysed yet"
	v := evaluate(t, rule, img, now)
	g.Expect(v.Compliant()).To(BeFalse())
	g.Expect(v.Results[0].Reason).To(Equal(ReasonNotScanned))
	g.Expect(v.Results[0].Message).To(ContainSubstring("not fully scanned"))

	over := scanned("r/a", vuln("CVE-1", securityv1alpha1.SeverityCritical, "1.1"))
	over.Report.Partial = img.Report.Partial
	g.Expect(evaluate(t, rule, over, now).Results[0].Reason).To(Equal(ReasonTooManyVulnerabilities))

	other := scanned("r/a")
	other.Report.Others = []*Report{{ScannedAt: now.Add(-time.Hour), Platform: "linux/arm64", Partial: img.Report.Partial}}
	g.Expect(other.Report.Pending()).NotTo(BeEmpty())
	g.Expect(evaluate(t, rule, other, now).Compliant()).To(BeFalse())

	// A partial report on one platform does not hide a failure on findings on another.
	masked := scanned("r/a")
	masked.Report.Partial = img.Report.Partial
	arm := scanned("r/a", vuln("CVE-1", securityv1alpha1.SeverityCritical, "1.1")).Report
	arm.Platform = "linux/arm64"
	masked.Report.Others = []*Report{arm}
	r := evaluate(t, rule, masked, now).Results[0]
	g.Expect(r.Reason).To(Equal(ReasonTooManyVulnerabilities))
	g.Expect(r.Message).To(Equal("on linux/arm64: 1 critical (max 0)"))

	// ReportOf reads it off the status, where a failed re-scan leaves it.
	rep := &securityv1alpha1.ImageScanReport{Status: securityv1alpha1.ImageScanReportStatus{
		Summary:                 &securityv1alpha1.VulnerabilitySummary{},
		JavaArchivesNotAnalysed: 2,
		Conditions:              []metav1.Condition{{Type: securityv1alpha1.ConditionScanned, Status: metav1.ConditionFalse, Reason: "Timeout"}},
	}}
	g.Expect(ReportOf(rep).Partial).To(ContainSubstring("2 of its Java archives"))
	rep.Status.JavaArchivesNotAnalysed = 0
	g.Expect(ReportOf(rep).Partial).To(BeEmpty())
}

func TestExceptions(t *testing.T) {
	expires := now.Add(time.Hour)
	rules := securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		Exceptions: []securityv1alpha1.VulnerabilityException{
			{ID: "CVE-1", Images: []string{"registry.example.com/*"}, Expires: metav1.NewTime(expires), Reason: "not reachable"},
		},
	}
	img := scanned("registry.example.com/app", vuln("CVE-1", securityv1alpha1.SeverityCritical, "1.1"))
	tests := map[string]struct {
		img        Image
		at         time.Time
		wantFailed bool
	}{
		"before expiry":                {img: img, at: now},
		"a nanosecond before expiry":   {img: img, at: expires.Add(-time.Nanosecond)},
		"exactly at expiry":            {img: img, at: expires, wantFailed: true},
		"after expiry":                 {img: img, at: expires.Add(time.Minute), wantFailed: true},
		"another image":                {img: scanned("registry.example.com.evil.io/app", vuln("CVE-1", securityv1alpha1.SeverityCritical, "1.1")), at: now, wantFailed: true},
		"another vulnerability":        {img: scanned("registry.example.com/app", vuln("CVE-9", securityv1alpha1.SeverityCritical, "")), at: now, wantFailed: true},
		"excepted plus one more fails": {img: scanned("registry.example.com/app", vuln("CVE-1", securityv1alpha1.SeverityCritical, ""), vuln("CVE-2", securityv1alpha1.SeverityCritical, "")), at: now, wantFailed: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			v := evaluate(t, rules, tt.img, tt.at)
			g.Expect(v.Results[0].Failed).To(Equal(tt.wantFailed), v.Results[0].Message)
		})
	}
	// The verdict says when it changes by itself: at the expiry.
	NewWithT(t).Expect(evaluate(t, rules, img, now).NextChange).To(Equal(expires))
}

const testKey = `-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEhJ7dxYgvE3kSrxrKMdszwP19Y/Sc
haQ36JeeApx/SPmcPHU70x4uQy+p6HIfgQMrW0GNIhxytt2SFs3iH3/pCw==
-----END PUBLIC KEY-----
`

func TestCheckSignatures(t *testing.T) {
	rules := securityv1alpha1.PolicyRules{Signatures: &securityv1alpha1.SignatureRule{
		Required: true, Keys: []securityv1alpha1.SignatureKey{{PublicKey: testKey}},
	}}
	p, err := Compile(rules)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	id := p.Signatures().ID
	tests := map[string]struct {
		verdicts         map[string]SignatureVerdict
		wantReason       string
		wantNotEvaluable bool
		wantFailed       bool
	}{
		"not verified yet: never a pass": {wantReason: ReasonSignaturePending, wantNotEvaluable: true},
		"a verdict of other authorities": {verdicts: map[string]SignatureVerdict{"other": {Verified: true}}, wantReason: ReasonSignaturePending, wantNotEvaluable: true},
		"signed":                         {verdicts: map[string]SignatureVerdict{id: {Verified: true, SignedBy: []string{"key #1"}}}, wantReason: ReasonPassed},
		"unsigned": {verdicts: map[string]SignatureVerdict{id: {Reason: securityv1alpha1.ReasonSignatureMissing, Message: "no signature"}},
			wantReason: securityv1alpha1.ReasonSignatureMissing, wantFailed: true},
		"a verdict without reason fails as invalid": {verdicts: map[string]SignatureVerdict{id: {}}, wantReason: securityv1alpha1.ReasonSignatureInvalid, wantFailed: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			img := scanned("r/a")
			img.Signatures = tt.verdicts
			v := p.Evaluate([]Image{img}, now)
			g.Expect(v.Results).To(HaveLen(1))
			g.Expect(v.Results[0].Reason).To(Equal(tt.wantReason))
			g.Expect(v.Results[0].NotEvaluable).To(Equal(tt.wantNotEvaluable))
			g.Expect(v.Results[0].Failed).To(Equal(tt.wantFailed))
			g.Expect(v.Compliant()).To(Equal(tt.wantReason == ReasonPassed))
		})
	}
}

func TestSignatureAuthorities(t *testing.T) {
	g := NewWithT(t)
	rule := func(mutate func(*securityv1alpha1.SignatureRule)) securityv1alpha1.PolicyRules {
		r := &securityv1alpha1.SignatureRule{Required: true,
			Keyless:   []securityv1alpha1.KeylessIdentity{{Issuer: "https://issuer", SubjectRegExp: ".*@example.com"}},
			TrustRoot: &securityv1alpha1.TrustRootSource{Kind: securityv1alpha1.TrustRootConfigMap, Name: "root", Namespace: "ns", Key: "trusted_root.json"}}
		if mutate != nil {
			mutate(r)
		}
		return securityv1alpha1.PolicyRules{Signatures: r}
	}
	id := func(r securityv1alpha1.PolicyRules) string {
		p, err := Compile(r)
		g.Expect(err).NotTo(HaveOccurred())
		return p.Signatures().ID
	}
	base := id(rule(nil))
	// Defaults spelled out are the same authorities; any other change is another set.
	g.Expect(id(rule(func(r *securityv1alpha1.SignatureRule) { r.RequireTransparencyLog = ptr.To(true) }))).To(Equal(base))
	g.Expect(id(rule(func(r *securityv1alpha1.SignatureRule) { r.RequireSignedTimestamp = ptr.To(false) }))).NotTo(Equal(base))
	g.Expect(id(rule(func(r *securityv1alpha1.SignatureRule) { r.TrustRoot.Namespace = "other" }))).NotTo(Equal(base))
	g.Expect(id(rule(func(r *securityv1alpha1.SignatureRule) { r.Keyless[0].SubjectRegExp = ".*@example.org" }))).NotTo(Equal(base))

	for name, bad := range map[string]func(*securityv1alpha1.SignatureRule){
		"bad regexp":      func(r *securityv1alpha1.SignatureRule) { r.Keyless[0].SubjectRegExp = "(" },
		"escaping regexp": func(r *securityv1alpha1.SignatureRule) { r.Keyless[0].SubjectRegExp = "x)|(?:.*" },
		"two issuers":     func(r *securityv1alpha1.SignatureRule) { r.Keyless[0].IssuerRegExp = ".*" },
		"no trust root":   func(r *securityv1alpha1.SignatureRule) { r.TrustRoot = nil },
		"bad inline key":  func(r *securityv1alpha1.SignatureRule) { r.Keys = []securityv1alpha1.SignatureKey{{PublicKey: "pem"}} },
		"nothing":         func(r *securityv1alpha1.SignatureRule) { r.Keyless = nil },
	} {
		_, err := Compile(rule(bad))
		g.Expect(err).To(HaveOccurred(), name)
	}
	// Regular expressions match whole values.
	g.Expect(regexp.MustCompile(AnchoredRegExp("a|b")).MatchString("xa")).To(BeFalse())
}

func TestChainOrderAndFirstFailure(t *testing.T) {
	g := NewWithT(t)
	rules := securityv1alpha1.PolicyRules{
		Registries:      &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/*"}},
		Tags:            &securityv1alpha1.TagRule{DisallowLatest: true},
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxHigh: ptr.To[int32](0)},
	}
	good := scanned("registry.example.com/good")
	bad := scanned("registry.example.com/bad", vuln("CVE-3", securityv1alpha1.SeverityHigh, "2"))
	bad.Tag = "latest"
	p, err := Compile(rules)
	g.Expect(err).NotTo(HaveOccurred())
	v := p.Evaluate([]Image{good, bad}, now)
	g.Expect(v.Results).To(HaveLen(6))
	g.Expect(v.FirstFailure().Rule).To(Equal(RuleTags))
	g.Expect(v.Reasons()).To(Equal([]string{
		"registry.example.com/bad:latest: tags: the latest tag (or no tag) is not allowed",
		"registry.example.com/bad:latest: vulnerabilities: 1 high (max 0)",
	}))
	g.Expect(p.Rules()).To(Equal([]string{RuleRegistries, RuleTags, RuleVulnerabilities}))

	_, err = Compile(securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{""}}})
	g.Expect(err).To(MatchError(ContainSubstring("registries.allowed")))
}

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseImage(t *testing.T) {
	tests := map[string]struct {
		image   string
		want    Image
		wantErr bool
	}{
		"docker hub short":   {image: "nginx", want: Image{Repository: "docker.io/library/nginx", Tag: "latest"}},
		"an upper-case host": {image: "REGISTRY.Example.COM/team/app:1.2", want: Image{Repository: "registry.example.com/team/app", Tag: "1.2"}},
		"the default port":   {image: "registry.example.com:443/app:1", want: Image{Repository: "registry.example.com/app", Tag: "1"}},
		"docker hub's alias": {image: "registry-1.docker.io/nginx:1.27", want: Image{Repository: "docker.io/library/nginx", Tag: "1.27"}},
		"a tag":              {image: "registry.example.com:5000/team/app:1.2", want: Image{Repository: "registry.example.com:5000/team/app", Tag: "1.2"}},
		"a digest":           {image: "registry.example.com/app@" + digest, want: Image{Repository: "registry.example.com/app", Digest: digest}},
		// The runtime pulls the digest and ignores the tag: so does a policy.
		"a tag and a digest":  {image: "registry.example.com/app:1.2@" + digest, want: Image{Repository: "registry.example.com/app", Digest: digest}},
		"a malformed one":     {image: "UPPER/Case::", wantErr: true},
		"a port, no tag, dig": {image: "localhost:5000/app@" + digest, want: Image{Repository: "localhost:5000/app", Digest: digest}},
		"an IPv6 host":        {image: "[2001:DB8:0::1]:05000/app:1", want: Image{Repository: "[2001:db8::1]:5000/app", Tag: "1"}},
		// What no runtime pulls is refused: Docker's grammar, as go-containerregistry reads it.
		"an upper-case path":     {image: "registry.example.com/App:1", wantErr: true},
		"a '_' in the host":      {image: "reg_istry.example.com/app:1", wantErr: true},
		"a 1-character path":     {image: "registry.example.com/a:1", wantErr: true},
		"an empty port":          {image: "registry.example.com:/app:1", wantErr: true},
		"a tag starting with .":  {image: "registry.example.com/app:.v1", wantErr: true},
		"a 6-digit port":         {image: "registry.example.com:123456/app:1", wantErr: true},
		"an IPv4-mapped IPv6":    {image: "[::ffff:102:304]/app:1", wantErr: true},
		"not an IPv6 address":    {image: "[:::1]/app:1", wantErr: true},
		"a name over 255":        {image: "registry.example.com/" + strings.Repeat("a", 235), wantErr: true},
		"a non-ASCII host":       {image: "exämple.com/app:1", wantErr: true},
		"leading white space":    {image: " nginx", wantErr: true},
		"an upper-case digest":   {image: "nginx@sha256:" + strings.ToUpper(digest[7:]), wantErr: true},
		"the longest name taken": {image: "registry.example.com/" + strings.Repeat("a", 234), want: Image{Repository: "registry.example.com/" + strings.Repeat("a", 234), Tag: "latest"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := ParseImage(tt.image)
			if tt.wantErr {
				g.Expect(err).To(HaveOccurred())
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tt.want))
		})
	}
}

// TestSpellingsOfOneImageMatchOneGlob: every spelling of an image is matched, and excepted, by a
// glob written in any spelling of its host; look-alikes are not.
func TestSpellingsOfOneImageMatchOneGlob(t *testing.T) {
	tests := []struct {
		glob  string
		image string
		want  bool
	}{
		{"registry.example.com/**", "registry.example.com/app:1", true},
		{"registry.example.com/**", "REGISTRY.EXAMPLE.COM/app:1", true},
		{"registry.example.com/**", "Registry.Example.Com:443/team/app:1", true},
		{"REGISTRY.example.com:443/**", "registry.example.com/app:1", true},
		{"registry.example.com/**", "registry.example.com:5000/app:1", false},
		{"registry.example.com/**", "registry.example.com.evil.io/app:1", false},
		{"docker.io/**", "nginx:1.27", true},
		{"docker.io/**", "docker.io/nginx:1.27", true},
		{"docker.io/**", "index.docker.io/library/nginx:1.27", true},
		{"docker.io/**", "registry-1.docker.io/library/nginx:1.27", true},
		{"docker.io/**", "registry.hub.docker.com/bitnami/redis:7", true},
		{"docker.io/**", "docker.io.evil.io/library/nginx:1", false},
		{"index.docker.io/library/*", "nginx:1.27", true},
		{"docker.io/nginx", "registry-1.docker.io/library/nginx:1.27", true},
		{"docker.io/*", "nginx:1.27", true},
		{"docker.io/*", "bitnami/redis:7", false},
		{"docker.io/library/nginx:1.*", "NGINX:1.27", false}, // a repository is never upper case
		{"docker.io/library/nginx:1.*", "nginx:1.27", true},
		{"*.example.com/**", "REGISTRY.EXAMPLE.COM/app:1", true},
		// Ports as the runtime dials them.
		{"registry.example.com/**", "registry.example.com:0443/app:1", true},
		{"docker.io/**", "index.docker.io:0443/library/nginx:1", true},
		{"registry.example.com:5000/**", "registry.example.com:05000/app:1", true},
		{"registry.example.com:5000/**", "registry.example.com:5001/app:1", false},
		// Globs in the short Docker Hub spelling of pod specs.
		{"bitnami/*", "bitnami/redis:7", true},
		{"bitnami/**", "docker.io/bitnami/redis:7", true},
		{"library/nginx", "nginx:1.27", true},
		{"nginx", "docker.io/library/nginx:1.27", true},
		{"nginx:1.*", "nginx:1.27", true},
		{"nginx", "registry.example.com/nginx:1", false},
		{"localhost/**", "localhost/app:1", true},
		{"**", "registry.example.com/any/thing:1", true},
	}
	for _, tt := range tests {
		t.Run(tt.glob+" "+tt.image, func(t *testing.T) {
			g := NewWithT(t)
			glob, err := CompileGlob(tt.glob)
			g.Expect(err).NotTo(HaveOccurred())
			img, err := ParseImage(tt.image)
			if err != nil {
				g.Expect(tt.want).To(BeFalse(), "%s does not parse: %v", tt.image, err)
				return
			}
			g.Expect(glob.MatchImage(img)).To(Equal(tt.want), "%s as %s", tt.image, img.Repository)
			// The same spellings apply to exceptions.
			rules := securityv1alpha1.PolicyRules{
				Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
				Exceptions: []securityv1alpha1.VulnerabilityException{{
					ID: "CVE-1", Images: []string{tt.glob}, Expires: metav1.NewTime(now.Add(time.Hour)), Reason: "r",
				}},
			}
			scannedImg := img
			scannedImg.Report = scanned(img.Repository, vuln("CVE-1", securityv1alpha1.SeverityCritical, "")).Report
			g.Expect(evaluate(t, rules, scannedImg, now).Compliant()).To(Equal(tt.want))
		})
	}
}

// TestKnownFindingsOutliveAFailedRescan: a report whose last scan failed keeps the findings of the
// scan before it in force.
func TestKnownFindingsOutliveAFailedRescan(t *testing.T) {
	g := NewWithT(t)
	scannedAt := metav1.NewTime(now.Add(-time.Hour))
	rep := &securityv1alpha1.ImageScanReport{Status: securityv1alpha1.ImageScanReportStatus{
		LastScanTime: &scannedAt,
		Summary:      &securityv1alpha1.VulnerabilitySummary{Critical: 1, Total: 1},
		Conditions: []metav1.Condition{
			{Type: securityv1alpha1.ConditionScanned, Status: metav1.ConditionFalse, Reason: "Unauthorized"},
			{Type: securityv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: "Unauthorized"},
		},
	}}
	r := ReportOf(rep)
	g.Expect(r).NotTo(BeNil())
	g.Expect(r.Summary.Critical).To(BeEquivalentTo(1))
	g.Expect(r.ScannedAt).To(Equal(scannedAt.Time))
	// Never scanned: no report to judge.
	g.Expect(ReportOf(&securityv1alpha1.ImageScanReport{})).To(BeNil())
}

// TestATagBesideADigestIsNotTrusted: in repo:tag@digest the digest is what runs; an exception
// granted to a tag line never covers a digest the tag did not name.
func TestATagBesideADigestIsNotTrusted(t *testing.T) {
	g := NewWithT(t)
	img, err := ParseImage("registry.example.com/app:1.4@" + digest)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(img.Tag).To(BeEmpty())
	img.Report = scanned(img.Repository, vuln("CVE-1", securityv1alpha1.SeverityCritical, "")).Report
	rules := securityv1alpha1.PolicyRules{
		Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)},
		Exceptions: []securityv1alpha1.VulnerabilityException{{
			ID: "CVE-1", Images: []string{"registry.example.com/app:1.*"}, Expires: metav1.NewTime(now.Add(time.Hour)), Reason: "r",
		}},
	}
	g.Expect(evaluate(t, rules, img, now).Compliant()).To(BeFalse())
}

// TestAGlobMatchingNothingIsRefused: "*" never crosses '/', so it can match no image; a policy
// written with it is invalid, not silently empty.
func TestAGlobMatchingNothingIsRefused(t *testing.T) {
	for _, glob := range []string{"*", "***"} {
		_, err := CompileGlob(glob)
		NewWithT(t).Expect(err).To(MatchError(ContainSubstring("matches no image")))
	}
}

// A glob's form matches as its regular expression does, for every subject.
func TestGlobFormsMatchAsTheirRegexp(t *testing.T) {
	g := NewWithT(t)
	subjects := []string{"registry.example.com/app", "registry.example.com/app/x", "registry.example.com/", "registry.example.com",
		"registry.example.com/app:1", "registry.example.com/team/app:v1", "docker.io/library/nginx:1.25", "docker.io/library/nginx:latest",
		"docker.io/library/nginx", "registry.example.com.evil.io/app", "registry.example.comx/app"}
	for _, pattern := range []string{"registry.example.com/**", "registry.example.com/*", "registry.example.com/app", "nginx:1.*",
		"registry.example.com/app:1", "registry.example.com**", "registry.example.com*", "*.example.com/**", "registry.example.com/*/app"} {
		glob, err := CompileGlob(pattern)
		g.Expect(err).NotTo(HaveOccurred())
		form, prefix := glob.Form()
		for _, subject := range subjects {
			var got bool
			switch form {
			case GlobExact:
				got = subject == prefix
			case GlobPrefix:
				got = strings.HasPrefix(subject, prefix)
			case GlobPrefixNoSlash:
				got = strings.HasPrefix(subject, prefix) && !strings.Contains(subject[len(prefix):], "/")
			default:
				continue
			}
			g.Expect(got).To(Equal(regexp.MustCompile(glob.Regexp()).MatchString(subject)), "%s ~ %s", pattern, subject)
		}
	}
}
