package policy

import (
	"fmt"
	"strings"
	"time"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

// The checks of the chain, one function each, in evaluation order. Each takes the part of the
// rules it judges (Compile only builds the checks whose rule is set) and returns the check with
// its rule's metadata beside it: the name results and PolicyReports use, and the PolicyReport
// severity of its failures.

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
	ReasonScanFailed             = "ScanFailed"
	ReasonDatabaseStale          = "DatabaseStale"
	ReasonAnalysisTooOld         = "AnalysisTooOld"
	ReasonTooManyVulnerabilities = "TooManyVulnerabilities"
	// ReasonSignaturePending: the image's signatures were not verified yet (or, at admission,
	// not in time: onUnscanned decides).
	ReasonSignaturePending = "SignaturePending"
	ReasonPassed           = "Passed"
)

// PolicyReport severities of failures (wgpolicyk8s.io's result severities).
const (
	SeverityHigh   = "high"
	SeverityMedium = "medium"
)

// check is one link of the chain: a rule, and the judgement of one image at a time, with when
// that judgement may change by itself (zero if never).
type check struct {
	rule     string
	severity string
	// needsReport is true for a check that judges an image's scan report or signatures, which
	// need its digest.
	needsReport bool
	judge       func(img Image, now time.Time) (Result, time.Time)
}

func pass(message string) Result { return Result{Reason: ReasonPassed, Message: message} }

func fail(reason, message string) Result {
	return Result{Reason: reason, Message: message, Failed: true}
}

func notEvaluable(reason, message string) Result {
	return Result{Reason: reason, Message: message, NotEvaluable: true}
}

// checkRegistries requires the image's host/path to match one of the allowed globs.
func checkRegistries(rule *securityv1alpha1.RegistryRule) (check, error) {
	allowed, err := CompileGlobs(rule.Allowed)
	if err != nil {
		return check{}, fmt.Errorf("registries.allowed: %w", err)
	}
	list := strings.Join(rule.Allowed, ", ")
	return check{rule: RuleRegistries, severity: SeverityHigh, judge: func(img Image, _ time.Time) (Result, time.Time) {
		for _, g := range allowed {
			if g.MatchImage(img) {
				return pass("matches " + g.String()), time.Time{}
			}
		}
		return fail(ReasonUntrustedRegistry,
			fmt.Sprintf("%s is not from a trusted registry (allowed: %s)", img.Repository, list)), time.Time{}
	}}, nil
}

// checkTags refuses the latest tag (or none) and, when asked, references without a digest.
func checkTags(rule *securityv1alpha1.TagRule) check {
	return check{rule: RuleTags, severity: SeverityMedium, judge: func(img Image, _ time.Time) (Result, time.Time) {
		if rule.RequireDigest && img.Digest == "" {
			return fail(ReasonDigestRequired, "the image must be referred to by digest (image@sha256:...)"), time.Time{}
		}
		if rule.DisallowLatest && (img.Tag == "latest" || (img.Tag == "" && img.Digest == "")) {
			return fail(ReasonLatestTag, "the latest tag (or no tag) is not allowed"), time.Time{}
		}
		return pass("the reference is pinned"), time.Time{}
	}}
}

// checkFreshness requires the image's findings to have been matched against a DB built at most
// limit ago (0: any), that DB not to be stale, the last match to have succeeded, and, with
// analysisLimit, the image to have been analysed at most that long ago; the verdict changes by
// itself when either gets too old.
func checkFreshness(limit, analysisLimit time.Duration) check {
	return check{rule: RuleFreshness, severity: SeverityMedium, needsReport: true, judge: func(img Image, now time.Time) (Result, time.Time) {
		r := img.Report
		if r == nil || (r.ScannedAt.IsZero() && r.MatchedDB.BuiltAt.IsZero()) {
			return fail(ReasonNotScanned, "the image has not been scanned yet"), time.Time{}
		}
		db := r.MatchedDB
		// A stale DB in use fails every freshness rule, whatever DB the findings came from.
		if db.Stale != "" {
			return fail(ReasonDatabaseStale, db.Stale), time.Time{}
		}
		if r.MatchFailed != "" {
			return fail(ReasonScanFailed, "the last match failed: "+r.MatchFailed), time.Time{}
		}
		var messages []string
		var next time.Time
		if limit > 0 {
			if db.BuiltAt.IsZero() {
				return fail(ReasonNotScanned, "the DB the findings were matched against is not known"), time.Time{}
			}
			// Absolute times: a message that changed with the clock would make a write per evaluation.
			built := db.BuiltAt.UTC().Format(time.RFC3339)
			if now.Sub(db.BuiltAt) > limit {
				if db.InUse {
					return fail(ReasonDatabaseStale, fmt.Sprintf("the findings were matched against the newest DB ImageGuard has, built at %s, more than %s ago",
						built, limit)), time.Time{}
				}
				return fail(ReasonScanTooOld, fmt.Sprintf("the findings were matched against a DB built at %s, more than %s ago; a newer DB is in use and the report was not matched against it yet",
					built, limit)), time.Time{}
			}
			messages = append(messages, "matched against a DB built at "+built)
			next = db.BuiltAt.Add(limit)
		}
		if analysisLimit > 0 {
			if r.AnalyzedAt.IsZero() {
				return fail(ReasonNotScanned, "the image has not been analysed yet"), time.Time{}
			}
			analysed := r.AnalyzedAt.UTC().Format(time.RFC3339)
			if now.Sub(r.AnalyzedAt) > analysisLimit {
				return fail(ReasonAnalysisTooOld, fmt.Sprintf("the image was last analysed at %s, more than %s ago (ImageGuard analyses it again at half that age; its report's ReanalysisFailed events say why that failed)",
					analysed, analysisLimit)), time.Time{}
			}
			messages = append(messages, "analysed at "+analysed)
			if due := r.AnalyzedAt.Add(analysisLimit); next.IsZero() || due.Before(next) {
				next = due
			}
		}
		return pass(strings.Join(messages, ", ")), next
	}}
}

// limit is a maximum number of findings of one severity.
type limit struct {
	severity securityv1alpha1.Severity
	max      int32
}

// checkVulnerabilities counts findings by severity, after exceptions and fixableOnly, against the
// maximums that are set; the verdict changes by itself at the earliest expiry of an exception
// that applied.
func checkVulnerabilities(rule *securityv1alpha1.VulnerabilityRule, exceptions []exception) check {
	var limits []limit
	for _, l := range []struct {
		severity securityv1alpha1.Severity
		max      *int32
	}{
		{securityv1alpha1.SeverityCritical, rule.MaxCritical}, {securityv1alpha1.SeverityHigh, rule.MaxHigh},
		{securityv1alpha1.SeverityMedium, rule.MaxMedium}, {securityv1alpha1.SeverityLow, rule.MaxLow},
	} {
		if l.max != nil {
			limits = append(limits, limit{severity: l.severity, max: *l.max})
		}
	}
	// The rule's name is said before the message ("vulnerabilities: 1 critical (max 0)"): the
	// message only says what counted.
	scope := ""
	if rule.FixableOnly {
		scope = "fixable "
	}
	return check{rule: RuleVulnerabilities, severity: SeverityHigh, needsReport: true, judge: func(img Image, now time.Time) (Result, time.Time) {
		if img.Report == nil {
			return fail(ReasonNotScanned, "the image has not been scanned yet"), time.Time{}
		}
		counts, excepted, next := count(img, rule.FixableOnly, exceptions, now)
		var over []string
		for _, l := range limits {
			if n := counts.Count(l.severity); n > l.max {
				over = append(over, fmt.Sprintf("%d %s%s (max %d)", n, scope, strings.ToLower(string(l.severity)), l.max))
			}
		}
		suffix := ""
		if excepted > 0 {
			suffix = fmt.Sprintf(", %d excepted", excepted)
		}
		if len(over) > 0 {
			return fail(ReasonTooManyVulnerabilities, strings.Join(over, ", ")+suffix), next
		}
		if img.Report.Partial != "" {
			// Within the limits on what was analysed; what was not may not be.
			return fail(ReasonNotScanned, "the image is not fully scanned: "+img.Report.Partial), next
		}
		return pass(fmt.Sprintf("%sfindings within limits%s", scope, suffix)), next
	}}
}

// count returns the findings of img that count: the summary's exact counts, less the listed
// findings that an exception covers or that fixableOnly leaves out. Omitted findings count as
// they are: a cut list can only make the verdict stricter.
func count(img Image, fixableOnly bool, exceptions []exception, now time.Time) (securityv1alpha1.VulnerabilitySummary, int, time.Time) {
	r := img.Report
	counts := r.Summary
	var excepted int
	var next time.Time
	for _, f := range r.Vulnerabilities {
		if fixableOnly && f.FixedVersion == "" {
			counts.Add(f.Severity, -1)
			continue
		}
		e, ok := exceptionFor(exceptions, f.ID, img, now)
		if !ok {
			continue
		}
		excepted++
		counts.Add(f.Severity, -1)
		if next.IsZero() || e.Expires.Before(next) {
			next = e.Expires
		}
	}
	return counts, excepted, next
}

// exception accepts one vulnerability in the images its globs match, until it expires.
type exception struct {
	ID      string
	Expires time.Time
	images  []Glob
}

func compileExceptions(in []securityv1alpha1.VulnerabilityException) ([]exception, error) {
	out := make([]exception, 0, len(in))
	for i, e := range in {
		globs, err := CompileGlobs(e.Images)
		if err != nil {
			return nil, fmt.Errorf("exceptions[%d].images: %w", i, err)
		}
		out = append(out, exception{ID: e.ID, Expires: e.Expires.Time, images: globs})
	}
	return out, nil
}

// exceptionFor returns the exception that covers vulnerability id in img at now.
func exceptionFor(exceptions []exception, id string, img Image, now time.Time) (exception, bool) {
	for _, e := range exceptions {
		if e.ID == id && now.Before(e.Expires) && AnyMatch(e.images, img) {
			return e, true
		}
	}
	return exception{}, false
}
