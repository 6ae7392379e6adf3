// Package policy judges images against the rules of an ImagePolicy or ClusterImagePolicy: a chain
// of small pure checks, each giving a rule, a reason, a message and whether it failed, evaluated
// in order. It reads no API and no clock: the caller passes the time.
package policy

import (
	"fmt"
	"slices"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/platform"
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
	// Signatures are the verdicts on the image's signatures, by authority set
	// (SignatureAuthorities.ID); an absent one is not verified yet.
	Signatures map[string]SignatureVerdict
	// Platform is, of an image admission found unscanned, the platform ("" for the default)
	// whose report a queued scan makes: one the pod may run on.
	Platform string
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
	// ScannedAt is the report's status.lastScanTime.
	ScannedAt time.Time
	// MatchedDB is how current the findings are: the build time of the DB they were last matched
	// against and whether that is the DB in use. ReportOf reads it from the status, which may lag
	// (a re-match that changes nothing is not written); the controller knows better and sets it
	// (workload.Gatherer's freshness).
	MatchedDB MatchedDB
	// MatchFailed says why the last match failed; empty when it succeeded.
	MatchFailed string
	// AnalyzedAt is when the image was last pulled and analysed (status.lastAnalysisTime).
	AnalyzedAt time.Time
	Summary    securityv1alpha1.VulnerabilitySummary
	// Vulnerabilities may be cut (Omitted counts the rest): exceptions and fixableOnly are applied
	// to the listed ones, the omitted ones count as they are in the summary.
	Vulnerabilities []securityv1alpha1.Vulnerability
	Omitted         int32
	// Platform is the platform of the image these findings are of (the report's spec.platform,
	// "" for the default).
	Platform string
	// Others are the scanned reports of the same index digest on the other platforms the pods
	// run on: a rule passes only when it passes on every one of them.
	Others []*Report
	// Partial says why the findings lack some of the image's packages (its Java archives were
	// not analysed yet: the report's reason JavaDBUnavailable); empty when they are complete. A
	// partial report can fail a rule, never pass one: the image counts as not scanned yet.
	Partial string
	// Index says the digest may name an image index, whose image differs from one platform to
	// the next: it does (status.imageDigest differs from spec.digest), or the report was
	// scanned before that was recorded.
	Index bool
	// IndexPlatforms are the platforms the index has images for (status.indexPlatforms);
	// empty when not known.
	IndexPlatforms []string
	// Repository is the repository the digest was scanned from (spec.image), in Namespace.
	Repository, Namespace string
}

// MayDiffer reports whether the digest's image may differ from one platform to the next: one of
// its platforms' reports says it may be an index.
func (r *Report) MayDiffer() bool {
	if r == nil {
		return false
	}
	return r.Index || slices.ContainsFunc(r.Others, (*Report).MayDiffer)
}

// Platforms returns the platforms an index digest has images for, as one of its reports knows
// them; ok is false when none does.
func (r *Report) Platforms() (platforms []string, ok bool) {
	if r == nil {
		return nil, false
	}
	if len(r.IndexPlatforms) > 0 {
		return r.IndexPlatforms, true
	}
	for _, o := range r.Others {
		if p, ok := o.Platforms(); ok {
			return p, true
		}
	}
	return nil, false
}

// Pending returns why the report, on one of its platforms, is partial; empty when none is.
func (r *Report) Pending() string {
	if r == nil {
		return ""
	}
	if r.Partial != "" {
		return r.Partial
	}
	for _, o := range r.Others {
		if p := o.Pending(); p != "" {
			return p
		}
	}
	return ""
}

// Covers reports whether the report holds findings for platform ("" for the default one).
func (r *Report) Covers(platform string) bool {
	if r == nil {
		return false
	}
	if r.Platform == platform {
		return true
	}
	for _, o := range r.Others {
		if o.Covers(platform) {
			return true
		}
	}
	return false
}

// ReportOf returns what a policy reads of an ImageScanReport: nil until the report holds a scan.
// The findings of the last scan that succeeded stay in force when a later scan fails (a registry
// that now answers 401, 404 or 429, an inventory lost with the cache): known findings never
// vanish, and maxScanAge says whether they are fresh enough.
func ReportOf(rep *securityv1alpha1.ImageScanReport) *Report {
	if rep == nil || rep.Status.Summary == nil {
		return nil
	}
	out := &Report{Summary: *rep.Status.Summary, Vulnerabilities: rep.Status.Vulnerabilities, Omitted: rep.Status.VulnerabilitiesOmitted, Platform: rep.Spec.Platform,
		Index: rep.Status.ImageDigest != rep.Spec.Digest, IndexPlatforms: rep.Status.IndexPlatforms, Repository: rep.Spec.Image, Namespace: rep.Namespace}
	if rep.Status.LastScanTime != nil {
		out.ScannedAt = rep.Status.LastScanTime.Time
	}
	if rep.Status.LastAnalysisTime != nil {
		out.AnalyzedAt = rep.Status.LastAnalysisTime.Time
	}
	if db := rep.Status.VulnerabilityDB; db != nil && db.UpdatedAt != nil {
		out.MatchedDB.BuiltAt = db.UpdatedAt.Time
	}
	if c := apimeta.FindStatusCondition(rep.Status.Conditions, securityv1alpha1.ConditionScanned); c != nil && c.Status == metav1.ConditionFalse {
		out.MatchFailed = c.Message
	}
	// Kept through a failed re-scan: the findings in force are those of the partial scan.
	if n := rep.Status.JavaArchivesNotAnalysed; n > 0 {
		out.Partial = fmt.Sprintf("%d of its Java archives were not analysed yet (no Java DB was loaded)", n)
	}
	return out
}

// SignaturesOf returns the signature verdicts of an ImageScanReport, by authority set; nil when it
// holds none.
func SignaturesOf(rep *securityv1alpha1.ImageScanReport) map[string]SignatureVerdict {
	if rep == nil || len(rep.Status.Signatures) == 0 {
		return nil
	}
	out := make(map[string]SignatureVerdict, len(rep.Status.Signatures))
	for _, c := range rep.Status.Signatures {
		out[c.Authorities] = SignatureVerdict{Verified: c.Verified, Reason: c.Reason, Message: c.Message, CheckedAt: c.CheckedAt.Time, SignedBy: SignerNames(c.SignedBy)}
	}
	return out
}

// SignerNames names each signer as results say who signed: "<identity> (<authority>)".
func SignerNames(signers []securityv1alpha1.Signer) []string {
	out := make([]string, 0, len(signers))
	for _, s := range signers {
		out = append(out, s.Identity+" ("+s.Authority+")")
	}
	return out
}

// MatchedDB is the DB a report's findings were last matched against.
type MatchedDB struct {
	// BuiltAt is when it was built; zero when unknown.
	BuiltAt time.Time
	// InUse is true when it is the DB in use (the findings are as current as they can be).
	InUse bool
	// Stale, when set, says why the DB in use is too old to trust (older than --db-max-age): every
	// freshness rule then fails, whatever DB the findings came from.
	Stale string
}

// Result is the outcome of one rule for one image.
type Result struct {
	Rule string
	// Severity is the PolicyReport severity of the rule's failures.
	Severity string
	Image    string
	Reason   string
	Message  string
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
			out = append(out, r.String())
		}
	}
	return out
}

// String says which image broke which rule and how: "<image>: <rule>: <message>".
func (r Result) String() string { return fmt.Sprintf("%s: %s: %s", r.Image, r.Rule, r.Message) }

// Policy is a compiled set of rules: the chain of the checks whose rule is set.
type Policy struct {
	checks []check
	// maxAnalysisAge is the rule's vulnerabilities.maxAnalysisAge; 0 if unset.
	maxAnalysisAge time.Duration
	signatures     *SignatureAuthorities
}

// Signatures returns the authorities of the policy's signature rule; nil when it requires none.
func (p *Policy) Signatures() *SignatureAuthorities { return p.signatures }

// MinAnalysisAge is the smallest maxAnalysisAge (the CRD refuses less too).
const MinAnalysisAge = time.Hour

// MaxAnalysisAge is how old an image's inventory may be under the policy; 0 when it does not say.
func (p *Policy) MaxAnalysisAge() time.Duration { return p.maxAnalysisAge }

// Compile builds the chain from the rules that are set, compiling their globs; an error names
// what can never work. The Secrets and ConfigMaps the signature rule names must name their
// namespace (workload.Compile fills it in).
func Compile(rules securityv1alpha1.PolicyRules) (*Policy, error) {
	p := &Policy{}
	if r := rules.Registries; r != nil {
		c, err := checkRegistries(r)
		if err != nil {
			return nil, err
		}
		p.checks = append(p.checks, c)
	}
	if t := rules.Tags; t != nil && (t.DisallowLatest || t.RequireDigest) {
		p.checks = append(p.checks, checkTags(t))
	}
	if v := rules.Vulnerabilities; v != nil && (v.MaxScanAge != nil || v.MaxAnalysisAge != nil) {
		var scanAge time.Duration
		if v.MaxScanAge != nil {
			scanAge = v.MaxScanAge.Duration
		}
		if v.MaxAnalysisAge != nil {
			if v.MaxAnalysisAge.Duration < MinAnalysisAge {
				return nil, fmt.Errorf("vulnerabilities.maxAnalysisAge %s is under %s: each re-analysis pulls the image again", v.MaxAnalysisAge.Duration, MinAnalysisAge)
			}
			p.maxAnalysisAge = v.MaxAnalysisAge.Duration
		}
		p.checks = append(p.checks, checkFreshness(scanAge, p.maxAnalysisAge))
	}
	exceptions, err := compileExceptions(rules.Exceptions)
	if err != nil {
		return nil, err
	}
	if v := rules.Vulnerabilities; v != nil && (v.MaxCritical != nil || v.MaxHigh != nil || v.MaxMedium != nil || v.MaxLow != nil) {
		p.checks = append(p.checks, checkVulnerabilities(v, exceptions))
	}
	if s := rules.Signatures; s != nil && s.Required {
		if p.signatures, err = compileSignatures(s); err != nil {
			return nil, err
		}
		p.checks = append(p.checks, checkSignatures(p.signatures))
	}
	return p, nil
}

// NeedsReport reports whether a check of the chain judges images' scan reports or signatures:
// only then does judging an image referred to by tag need its digest.
func (p *Policy) NeedsReport() bool {
	for _, c := range p.checks {
		if c.needsReport {
			return true
		}
	}
	return false
}

// Rules lists the rules of the chain, in evaluation order.
func (p *Policy) Rules() []string {
	out := make([]string, 0, len(p.checks))
	for _, c := range p.checks {
		out = append(out, c.rule)
	}
	return out
}

// judgeEveryPlatform judges img, and when its report has reports of other platforms (an index
// digest run on nodes of several), each of them too: the first failure, said with its platform
// (one that is not NotScanned before one that is: a verdict on findings is final, an unscanned
// one is onUnscanned's), else the pass of img's own report; the earliest change of any.
func (c check) judgeEveryPlatform(img Image, now time.Time) (Result, time.Time) {
	r, next := c.judge(img, now)
	if !c.needsReport || img.Report == nil || len(img.Report.Others) == 0 {
		return r, next
	}
	if r.Failed || r.NotEvaluable {
		r.Message = "on " + PlatformName(img.Report.Platform) + ": " + r.Message
	}
	for _, other := range img.Report.Others {
		one := img
		one.Report = other
		or, onext := c.judge(one, now)
		if !onext.IsZero() && (next.IsZero() || onext.Before(next)) {
			next = onext
		}
		worse := (!r.Failed && !r.NotEvaluable && (or.Failed || or.NotEvaluable)) ||
			(r.Reason == ReasonNotScanned && (or.Failed || or.NotEvaluable) && or.Reason != ReasonNotScanned)
		if worse {
			or.Message = "on " + PlatformName(other.Platform) + ": " + or.Message
			r = or
		}
	}
	return r, next
}

// DefaultPlatform is the platform of a report whose spec.platform is empty: the image an index
// digest names for it is scanned.
const DefaultPlatform = platform.Default

// PlatformName names a report's platform: DefaultPlatform for "".
func PlatformName(p string) string {
	if p == "" {
		return DefaultPlatform
	}
	return p
}

// Evaluate judges images at time now: every check of the chain, for every image, in rule order.
func (p *Policy) Evaluate(images []Image, now time.Time) Verdict {
	var v Verdict
	for _, c := range p.checks {
		for _, img := range images {
			r, next := c.judgeEveryPlatform(img, now)
			r.Rule, r.Severity, r.Image = c.rule, c.severity, img.Reference()
			v.Results = append(v.Results, r)
			if !next.IsZero() && (v.NextChange.IsZero() || next.Before(v.NextChange)) {
				v.NextChange = next
			}
		}
	}
	return v
}
