// Package policy judges images against the rules of an ImagePolicy or ClusterImagePolicy: a chain
// of small pure checks, each giving a rule, a reason, a message and whether it failed, evaluated
// in order. It reads no API and no clock: the caller passes the time.
package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"k8s.io/apimachinery/pkg/api/meta"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

// Rule names, as results and PolicyReports name them.
const (
	RuleRegistries      = "registries"
	RuleTags            = "tags"
	RuleFreshness       = "freshness"
	RuleVulnerabilities = "vulnerabilities"
	RuleSignatures      = "signatures"
)

// Reasons of failed or unevaluable checks.
const (
	ReasonUntrustedRegistry      = "UntrustedRegistry"
	ReasonLatestTag              = "LatestTag"
	ReasonDigestRequired         = "DigestRequired"
	ReasonNotScanned             = "NotScanned"
	ReasonScanTooOld             = "ScanTooOld"
	ReasonTooManyVulnerabilities = "TooManyVulnerabilities"
	ReasonSignatureNotVerifiable = "SignatureVerificationUnavailable"
	ReasonSignatureInvalid       = "SignatureInvalid"
	ReasonPassed                 = "Passed"
	ReasonInvalidPolicy          = securityv1alpha1.ReasonInvalidPolicy
)

// Image is one image of a workload, as a policy sees it.
type Image struct {
	// Container is the container that runs it.
	Container string
	// Repository is host/path, e.g. registry.example.com/team/app.
	Repository string
	// Tag is the tag of the reference; empty for a digest-only or untagged reference.
	Tag string
	// Digest is the digest of the reference when it names one (image@sha256:...).
	Digest string
	// Report is the image's scan report; nil when it was not scanned yet.
	Report *Report
}

// ParseImage parses an image reference as a pod spec names it: "nginx" becomes
// index.docker.io/library/nginx with tag latest; registry/app:1.2@sha256:... keeps its tag.
func ParseImage(ref string) (Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("malformed image reference %q: %w", ref, err)
	}
	img := Image{Repository: r.Context().Name()}
	switch r := r.(type) {
	case name.Tag:
		img.Tag = r.TagStr()
	case name.Digest:
		img.Digest = r.DigestStr()
		left := ref[:strings.LastIndex(ref, "@")]
		if strings.LastIndex(left, ":") > strings.LastIndex(left, "/") {
			if t, err := name.NewTag(left); err == nil {
				img.Tag = t.TagStr()
			}
		}
	}
	return img, nil
}

// Reference returns the image as a pod names it.
func (i Image) Reference() string {
	ref := i.Repository
	if i.Tag != "" {
		ref += ":" + i.Tag
	}
	if i.Digest != "" {
		ref += "@" + i.Digest
	}
	return ref
}

// Report is what a policy reads of an ImageScanReport.
type Report struct {
	ScannedAt time.Time
	Summary   securityv1alpha1.VulnerabilitySummary
	// Vulnerabilities may be cut (Omitted counts the rest): exceptions and fixableOnly are applied
	// to the listed ones, the omitted ones count as they are in the summary.
	Vulnerabilities []securityv1alpha1.Vulnerability
	Omitted         int32
}

// ReportOf returns what a policy reads of an ImageScanReport: nil until the report holds a scan.
func ReportOf(rep *securityv1alpha1.ImageScanReport) *Report {
	if rep == nil || rep.Status.Summary == nil || !meta.IsStatusConditionTrue(rep.Status.Conditions, securityv1alpha1.ConditionScanned) {
		return nil
	}
	out := &Report{Summary: *rep.Status.Summary, Vulnerabilities: rep.Status.Vulnerabilities, Omitted: rep.Status.VulnerabilitiesOmitted}
	if rep.Status.LastScanTime != nil {
		out.ScannedAt = rep.Status.LastScanTime.Time
	}
	return out
}

// SignatureVerifier checks an image's signatures against keys. A nil verifier means signature
// verification is not available in this build.
type SignatureVerifier interface {
	Verify(img Image, keys []securityv1alpha1.SignatureKey) (ok bool, message string, err error)
}

// Result is the outcome of one rule for one image.
type Result struct {
	Rule    string
	Image   string
	Reason  string
	Message string
	// Failed is true when the image breaks the rule; NotEvaluable when the rule could not be
	// judged (a missing verifier): both make the workload non-compliant.
	Failed       bool
	NotEvaluable bool
}

// Verdict is the judgement of one workload's images by one policy.
type Verdict struct {
	Results []Result
	// NextChange is when the verdict may change by itself (an exception expiring); zero if never.
	NextChange time.Time
}

// Compliant reports whether no result failed and all could be evaluated.
func (v Verdict) Compliant() bool { return v.FirstFailure() == nil }

// FirstFailure returns the first failed or unevaluable result, in rule order; nil if none.
func (v Verdict) FirstFailure() *Result {
	for i := range v.Results {
		if v.Results[i].Failed || v.Results[i].NotEvaluable {
			return &v.Results[i]
		}
	}
	return nil
}

// Reasons returns one line per failure: "<image>: <rule>: <message>".
func (v Verdict) Reasons() []string {
	var out []string
	for _, r := range v.Results {
		if r.Failed || r.NotEvaluable {
			out = append(out, fmt.Sprintf("%s: %s: %s", r.Image, r.Rule, r.Message))
		}
	}
	return out
}

// Policy is a compiled set of rules.
type Policy struct {
	rules      securityv1alpha1.PolicyRules
	registries []Glob
	exceptions []exception
	verifier   SignatureVerifier
}

type exception struct {
	securityv1alpha1.VulnerabilityException
	images []Glob
}

// Compile checks rules and compiles their globs; an error names what can never work.
func Compile(rules securityv1alpha1.PolicyRules, verifier SignatureVerifier) (*Policy, error) {
	p := &Policy{rules: rules, verifier: verifier}
	if rules.Registries != nil {
		globs, err := CompileGlobs(rules.Registries.Allowed)
		if err != nil {
			return nil, fmt.Errorf("registries.allowed: %w", err)
		}
		p.registries = globs
	}
	for i, e := range rules.Exceptions {
		globs, err := CompileGlobs(e.Images)
		if err != nil {
			return nil, fmt.Errorf("exceptions[%d].images: %w", i, err)
		}
		p.exceptions = append(p.exceptions, exception{VulnerabilityException: e, images: globs})
	}
	return p, nil
}

// check is one link of the chain: the result for img, and when the result may change by itself.
type check func(p *Policy, img Image, now time.Time) (Result, time.Time)

var chain = []check{checkRegistries, checkTags, checkFreshness, checkVulnerabilities, checkSignatures}

// Evaluate judges images at time now: every rule that is set, for every image, in rule order.
func (p *Policy) Evaluate(images []Image, now time.Time) Verdict {
	var v Verdict
	for _, c := range chain {
		for _, img := range images {
			r, next := c(p, img, now)
			if r.Rule == "" {
				continue // rule not set
			}
			r.Image = img.Reference()
			v.Results = append(v.Results, r)
			if !next.IsZero() && (v.NextChange.IsZero() || next.Before(v.NextChange)) {
				v.NextChange = next
			}
		}
	}
	return v
}

func pass(rule, message string) Result {
	return Result{Rule: rule, Reason: ReasonPassed, Message: message}
}

func fail(rule, reason, message string) Result {
	return Result{Rule: rule, Reason: reason, Message: message, Failed: true}
}

func checkRegistries(p *Policy, img Image, _ time.Time) (Result, time.Time) {
	if p.rules.Registries == nil {
		return Result{}, time.Time{}
	}
	for _, g := range p.registries {
		if g.MatchImage(img) {
			return pass(RuleRegistries, "matches "+g.String()), time.Time{}
		}
	}
	return fail(RuleRegistries, ReasonUntrustedRegistry,
		fmt.Sprintf("%s is not from a trusted registry (allowed: %s)", img.Repository, strings.Join(p.rules.Registries.Allowed, ", "))), time.Time{}
}

func checkTags(p *Policy, img Image, _ time.Time) (Result, time.Time) {
	t := p.rules.Tags
	if t == nil || (!t.DisallowLatest && !t.RequireDigest) {
		return Result{}, time.Time{}
	}
	if t.RequireDigest && img.Digest == "" {
		return fail(RuleTags, ReasonDigestRequired, "the image must be referred to by digest (image@sha256:...)"), time.Time{}
	}
	if t.DisallowLatest && (img.Tag == "latest" || (img.Tag == "" && img.Digest == "")) {
		return fail(RuleTags, ReasonLatestTag, "the latest tag (or no tag) is not allowed"), time.Time{}
	}
	return pass(RuleTags, "the reference is pinned"), time.Time{}
}

func checkFreshness(p *Policy, img Image, now time.Time) (Result, time.Time) {
	v := p.rules.Vulnerabilities
	if v == nil || v.MaxScanAge == nil {
		return Result{}, time.Time{}
	}
	if img.Report == nil || img.Report.ScannedAt.IsZero() {
		return fail(RuleFreshness, ReasonNotScanned, "the image has not been scanned yet"), time.Time{}
	}
	age := now.Sub(img.Report.ScannedAt)
	limit := v.MaxScanAge.Duration
	if age > limit {
		return fail(RuleFreshness, ReasonScanTooOld,
			fmt.Sprintf("the last scan is %s old, more than %s", age.Round(time.Second), limit)), time.Time{}
	}
	return pass(RuleFreshness, fmt.Sprintf("scanned %s ago", age.Round(time.Second))), img.Report.ScannedAt.Add(limit)
}

// checkVulnerabilities counts findings by severity, after exceptions and fixableOnly, against the
// maximums. It returns the earliest expiry of an exception that applied.
func checkVulnerabilities(p *Policy, img Image, now time.Time) (Result, time.Time) {
	v := p.rules.Vulnerabilities
	if v == nil || (v.MaxCritical == nil && v.MaxHigh == nil && v.MaxMedium == nil && v.MaxLow == nil) {
		return Result{}, time.Time{}
	}
	if img.Report == nil {
		return fail(RuleVulnerabilities, ReasonNotScanned, "the image has not been scanned yet"), time.Time{}
	}
	counts, excepted, next := p.count(img, now)
	var over []string
	for _, lim := range []struct {
		severity string
		max      *int32
		n        int32
	}{
		{"critical", v.MaxCritical, counts.Critical}, {"high", v.MaxHigh, counts.High},
		{"medium", v.MaxMedium, counts.Medium}, {"low", v.MaxLow, counts.Low},
	} {
		if lim.max != nil && lim.n > *lim.max {
			over = append(over, fmt.Sprintf("%d %s (max %d)", lim.n, lim.severity, *lim.max))
		}
	}
	scope := "vulnerabilities"
	if v.FixableOnly {
		scope = "fixable vulnerabilities"
	}
	suffix := ""
	if excepted > 0 {
		suffix = fmt.Sprintf(", %d excepted", excepted)
	}
	if len(over) > 0 {
		return fail(RuleVulnerabilities, ReasonTooManyVulnerabilities,
			fmt.Sprintf("%s: %s%s", scope, strings.Join(over, ", "), suffix)), next
	}
	return pass(RuleVulnerabilities, fmt.Sprintf("%s within limits%s", scope, suffix)), next
}

// count returns the findings of img that count: the summary's exact counts, less the listed
// findings that an exception covers or that fixableOnly leaves out. Omitted findings count as
// they are: a cut list can only make the verdict stricter.
func (p *Policy) count(img Image, now time.Time) (securityv1alpha1.VulnerabilitySummary, int, time.Time) {
	r := img.Report
	counts := r.Summary
	fixableOnly := p.rules.Vulnerabilities.FixableOnly
	if fixableOnly {
		for _, f := range r.Vulnerabilities {
			if f.FixedVersion == "" {
				add(&counts, f.Severity, -1)
			}
		}
	}
	var excepted int
	var next time.Time
	for _, f := range r.Vulnerabilities {
		if fixableOnly && f.FixedVersion == "" {
			continue
		}
		e, ok := p.exceptionFor(f.ID, img, now)
		if !ok {
			continue
		}
		excepted++
		add(&counts, f.Severity, -1)
		if next.IsZero() || e.Expires.Time.Before(next) {
			next = e.Expires.Time
		}
	}
	return counts, excepted, next
}

// exceptionFor returns the exception that covers vulnerability id in img at now.
func (p *Policy) exceptionFor(id string, img Image, now time.Time) (exception, bool) {
	for _, e := range p.exceptions {
		if e.ID == id && now.Before(e.Expires.Time) && AnyMatch(e.images, img) {
			return e, true
		}
	}
	return exception{}, false
}

func add(s *securityv1alpha1.VulnerabilitySummary, severity securityv1alpha1.Severity, n int32) {
	switch severity {
	case securityv1alpha1.SeverityCritical:
		s.Critical += n
	case securityv1alpha1.SeverityHigh:
		s.High += n
	case securityv1alpha1.SeverityMedium:
		s.Medium += n
	case securityv1alpha1.SeverityLow:
		s.Low += n
	default:
		s.Unknown += n
	}
}

// checkSignatures requires a valid signature by one of the keys. Without a verifier the rule is
// reported as not evaluable, never as passed.
func checkSignatures(p *Policy, img Image, _ time.Time) (Result, time.Time) {
	s := p.rules.Signatures
	if s == nil || !s.Required {
		return Result{}, time.Time{}
	}
	if p.verifier == nil {
		return Result{Rule: RuleSignatures, Reason: ReasonSignatureNotVerifiable, NotEvaluable: true,
			Message: "signatures are required but signature verification is not available yet; the rule cannot pass"}, time.Time{}
	}
	ok, msg, err := p.verifier.Verify(img, s.Keys)
	switch {
	case err != nil:
		return Result{Rule: RuleSignatures, Reason: ReasonSignatureNotVerifiable, NotEvaluable: true, Message: err.Error()}, time.Time{}
	case !ok:
		return fail(RuleSignatures, ReasonSignatureInvalid, msg), time.Time{}
	}
	return pass(RuleSignatures, msg), time.Time{}
}

// Rules lists the rules a policy sets, in evaluation order.
func Rules(rules securityv1alpha1.PolicyRules) []string {
	var out []string
	if rules.Registries != nil {
		out = append(out, RuleRegistries)
	}
	if t := rules.Tags; t != nil && (t.DisallowLatest || t.RequireDigest) {
		out = append(out, RuleTags)
	}
	if v := rules.Vulnerabilities; v != nil && v.MaxScanAge != nil {
		out = append(out, RuleFreshness)
	}
	if v := rules.Vulnerabilities; v != nil && (v.MaxCritical != nil || v.MaxHigh != nil || v.MaxMedium != nil || v.MaxLow != nil) {
		out = append(out, RuleVulnerabilities)
	}
	if s := rules.Signatures; s != nil && s.Required {
		out = append(out, RuleSignatures)
	}
	return slices.Clip(out)
}
