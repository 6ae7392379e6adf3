// Package admission decides at admission time whether images may run, with the same policy
// engine and the same gatherer as the controllers, from the informer cache. The only remote calls
// on the request path are tag lookups that a decision needs, in parallel, within the request's
// decision budget: what is not resolved in time is unscanned, and onUnscanned decides. It serves
// Kubernetes' ImagePolicyWebhook (ImageReview) and, in the validating webhook, pods and pod
// templates.
package admission

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/platform"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/workload"
)

// State is the view admission decides from: the policies that apply to a namespace and workload
// labels, and the reports of images.
type State interface {
	// Policies returns the valid policies that apply in namespace to a workload with any of the
	// label sets (its own labels, its pods' labels); without any, every policy of the namespace.
	Policies(ctx context.Context, namespace string, labelSets ...map[string]string) ([]*workload.Policy, error)
	// Reports returns, for each image, its digest (empty when it cannot be told before ctx ends)
	// and its scan report as seen from namespace (nil when it was never scanned). Images whose
	// digest must be looked up (resolve true) are looked up in parallel with the pull secrets of
	// spec (nil: the namespace's default service account's); the others are judged by the digest
	// their reference names, if any. For an image whose digest stays unknown, lastKnown is the
	// report of the digest its tag last named in the namespace, if any.
	Reports(ctx context.Context, namespace string, spec *corev1.PodSpec, images []policy.Image, resolve []bool) (digests []string, reports, lastKnown []*policy.Report)
	// NodePlatforms returns the platforms, as workload.NodePlatform gives them, of the cluster's
	// nodes a pod of spec may land on (its node selector and required node affinity allow them;
	// nil, an ImageReview: every node), and of those that may join.
	NodePlatforms(ctx context.Context, spec *corev1.PodSpec) ([]string, error)
	// OptedOut reports whether a namespace turned the validating webhook off (OptOutLabel).
	OptedOut(ctx context.Context, namespace string) bool
	// Signatures returns the verdicts on the signatures of img (its digest known) under each of
	// sets, as seen from namespace: a kept one at once, else one verified before ctx ends with
	// the pull secrets of spec; a set with no verdict in time is absent.
	Signatures(ctx context.Context, namespace string, spec *corev1.PodSpec, img policy.Image, sets []*policy.SignatureAuthorities) map[string]policy.SignatureVerdict
}

// Decision is the answer to one request.
type Decision struct {
	Allowed bool
	// Exempt is true when the namespace is not checked at all.
	Exempt bool
	// Message names each failing image and rule of the policies that enforce.
	Message string
	// Warnings are the failures of Warn policies (and of Enforce ones, repeated), for the client.
	Warnings []string
	// Unscanned are images never scanned, with their digest when known; their scan may be queued.
	Unscanned []policy.Image
	// PlatformGaps are those of Unscanned whose digest is scanned, but not on a platform the pod
	// may run on (Platform); one per platform.
	PlatformGaps []policy.Image
	// OnlyUnscanned is true for a refusal whose every failure is an image not scanned yet
	// (onUnscanned: Deny) that passes every other rule: its scan is what the caller waits for.
	OnlyUnscanned bool
	// Audit holds per-policy results for the audit log.
	Audit map[string]string
}

// Decide judges the containers of req at time now. Rules that need no report (registries, tags)
// are judged first; when they already refuse the request, no registry is asked anything. Then the
// digests of tag references are looked up, only for images a policy judges by report, and the
// whole chain decides. ctx bounds the lookups.
func Decide(ctx context.Context, state State, req Request, now time.Time) (Decision, error) {
	policies, err := state.Policies(ctx, req.Namespace, req.Labels, req.PodLabels)
	if err != nil {
		return Decision{}, err
	}
	if req.OnlyPolicies != nil {
		policies = slices.DeleteFunc(slices.Clone(policies), func(p *workload.Policy) bool { return !slices.Contains(req.OnlyPolicies, p.Ref) })
	}
	images := make([]policy.Image, 0, len(req.Containers))
	for _, c := range req.Containers {
		img, err := policy.ParseImage(c.Image)
		if err != nil {
			return Decision{Message: fmt.Sprintf("denied by ImageGuard: container %s: %v", c.Name, err), Audit: map[string]string{}}, nil
		}
		img.Container = c.Name
		images = append(images, img)
	}
	// unknown says why each image counts as unscanned; "" when it does not.
	unknown := make([]string, len(images))
	if d := judge(policies, images, unknown, false, now); !d.Allowed {
		return d, nil // refused on what the references say: no lookup can change that
	}
	resolve := make([]bool, len(images))
	for _, p := range policies {
		if p.Enforcement == securityv1alpha1.EnforcementAudit || (!p.Rules.NeedsReport() && p.OnUnscanned != securityv1alpha1.UnscannedDeny) {
			continue // its verdict on reports changes no answer
		}
		for i, img := range images {
			if img.Digest == "" && len(p.MatchImages([]policy.Image{img})) > 0 {
				resolve[i] = true
			}
		}
	}
	lookups, cancel := lookupContext(ctx)
	defer cancel()
	digests, reports, lastKnown := state.Reports(lookups, req.Namespace, req.PodSpec, images, resolve)
	requested := workload.RequestedPlatforms(req.PodSpec)
	var nodes []string
	nodesRead := false
	var unscanned, gaps []policy.Image
	for i := range images {
		images[i].Report = reports[i]
		withDigest := images[i]
		if withDigest.Digest == "" {
			withDigest.Digest = digests[i]
		}
		if reports[i] == nil {
			unscanned = append(unscanned, withDigest)
			unknown[i] = "not scanned yet"
			// A tag whose digest cannot be told now is judged by the findings of the digest it
			// named last, so that they can refuse it; passing them, it is still unscanned.
			images[i].Report = lastKnown[i]
			continue
		}
		// Scanned, but perhaps not on every platform the pod may run on (an index's image
		// differs from one to the next), or in part (Java archives not analysed yet): judged on
		// what is known, which can refuse it; passing, it is unscanned and onUnscanned decides.
		var missing []string
		if reports[i].MayDiffer() {
			if requested == nil && !nodesRead {
				if nodes, err = state.NodePlatforms(ctx, req.PodSpec); err != nil {
					return Decision{}, err
				}
				nodesRead = true
			}
			missing = uncovered(reports[i], requested, nodes)
		}
		for _, p := range missing {
			g := withDigest
			g.Platform = p
			gaps = append(gaps, g)
		}
		switch {
		case reports[i].Pending() != "":
			unknown[i] = "not scanned yet in full: " + reports[i].Pending()
			if len(missing) == 0 {
				unscanned = append(unscanned, withDigest)
			}
		case len(missing) > 0:
			names := make([]string, len(missing))
			for j, p := range missing {
				names[j] = policy.PlatformName(p)
			}
			unknown[i] = "not scanned yet for " + strings.Join(names, ", ")
		}
	}
	verifySignatures(lookups, state, req, policies, images, digests)
	d := judge(policies, images, unknown, true, now)
	d.Unscanned = append(unscanned, gaps...)
	d.PlatformGaps = gaps
	return d, nil
}

// UnknownPlatform stands, among NodePlatforms, for a node whose platform is not known yet.
const UnknownPlatform = "?"

// uncovered returns the platforms the image of r's digest may run on without a scanned report:
// those the pod asks for (requested), else those of the cluster's nodes (with none, every Linux
// platform of the index); of an index whose
// platforms are known, only those that run one of its images as containerd chooses them (an
// arm64 node runs an arm/v7 image, an amd64 node a 386 one; on another, the pod cannot run).
func uncovered(r *policy.Report, requested, nodes []string) []string {
	want := requested
	if want == nil {
		want = nodes
	}
	has, known := r.Platforms()
	if (len(want) == 0 || slices.Contains(want, UnknownPlatform)) && known {
		// No node it may land on yet (a cluster scaled to zero, nodes still to be provisioned),
		// or one whose platform is not known yet: any of the index's Linux platforms may be the
		// one it runs on.
		want = slices.DeleteFunc(slices.Clone(want), func(p string) bool { return p == UnknownPlatform })
		for _, h := range has {
			if parts := strings.SplitN(h, "/", 3); len(parts) >= 2 && parts[0] == "linux" {
				if p := workload.NodePlatform(parts[0], parts[1]); !slices.Contains(want, p) {
					want = append(want, p)
				}
			}
		}
	}
	var out []string
	for _, p := range want {
		if p == UnknownPlatform {
			continue // the index's platforms are not known either: those of the other nodes count
		}
		if known && !slices.ContainsFunc(has, func(h string) bool { return platform.Runs(p, h) }) {
			continue
		}
		if !r.Covers(p) && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// verifySignatures gives each image whose digest is known (digests, as looked up) the verdicts on its signatures of the
// authority sets of the policies that enforce or warn on it, in parallel, within ctx: what is not
// verified in time stays absent (SignaturePending: the rule fails).
func verifySignatures(ctx context.Context, state State, req Request, policies []*workload.Policy, images []policy.Image, digests []string) {
	type answer struct {
		key      string
		verdicts map[string]policy.SignatureVerdict
	}
	// One verification per repository, digest and authority sets, whatever the number of
	// containers that name them.
	keys := make([]string, len(images))
	started := map[string]bool{}
	answers := make(chan answer, min(len(images), maxSignatureDigests))
	for i, img := range images {
		if digests[i] != "" {
			img.Digest = digests[i]
		}
		if img.Digest == "" {
			continue
		}
		var sets []*policy.SignatureAuthorities
		for _, p := range policies {
			if a := p.Rules.Signatures(); a != nil && p.Enforcement != securityv1alpha1.EnforcementAudit && len(p.MatchImages(images[i:i+1])) > 0 &&
				!slices.ContainsFunc(sets, func(s *policy.SignatureAuthorities) bool { return s.ID == a.ID }) {
				sets = append(sets, a)
			}
		}
		if len(sets) == 0 {
			continue
		}
		// Past the bound, a set has no verdict: pending, refused under Enforce.
		sets = sets[:min(len(sets), securityv1alpha1.MaxSignatureChecks)]
		key := img.Repository + "@" + img.Digest
		for _, a := range sets {
			key += " " + a.ID
		}
		keys[i] = key
		if started[key] || len(started) == maxSignatureDigests {
			continue // verified already, or past the bound (pending: refused under Enforce)
		}
		started[key] = true
		go func(img policy.Image) {
			answers <- answer{key, state.Signatures(ctx, req.Namespace, req.PodSpec, img, sets)}
		}(img)
	}
	verdicts := make(map[string]map[string]policy.SignatureVerdict, len(started))
	for range started {
		a := <-answers // Signatures returns by the end of ctx
		verdicts[a.key] = a.verdicts
	}
	for i := range images {
		if v, ok := verdicts[keys[i]]; ok {
			images[i].Signatures = v
		}
	}
}

// maxSignatureDigests bounds the verifications of one request (distinct repository, digest and
// authority sets); the other images stay not verified (refused under Enforce). A pod runs a
// handful.
const maxSignatureDigests = 64

// lookupContext is ctx for the lookups: they end a tenth of what is left of ctx's deadline (at
// most 250ms) before it, so that the decision and its answer still fit in the budget.
func lookupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	reserve := min(time.Until(deadline)/10, 250*time.Millisecond)
	return context.WithDeadline(ctx, deadline.Add(-reserve))
}

// judge evaluates every policy over the images it matches. An image without a report fails the
// rules that need one only as onUnscanned says, and so does an unscanned one (judged by the
// findings of its tag's last digest, which only refuse). Signatures not verified in time fail,
// once final (before the lookups, they are not verified yet: no refusal), whatever onUnscanned
// says. unscanned says why each image counts as unscanned ("" when it does not).
func judge(policies []*workload.Policy, images []policy.Image, unscanned []string, final bool, now time.Time) Decision {
	d := Decision{Allowed: true, Audit: map[string]string{}}
	var denials []string
	onlyUnscanned := true
	for _, p := range policies {
		matched := p.MatchImages(images)
		if len(matched) == 0 {
			continue
		}
		var failures []string
		unscannedOnly := true
		for i, img := range images {
			if unscanned[i] != "" && p.OnUnscanned == securityv1alpha1.UnscannedDeny && len(p.MatchImages(images[i:i+1])) > 0 {
				failures = append(failures, fmt.Sprintf("%s: %s (onUnscanned: Deny)", img.Reference(), unscanned[i]))
			}
		}
		for _, r := range p.Rules.Evaluate(matched, now).Results {
			if r.Reason == policy.ReasonSignaturePending {
				// Whatever onUnscanned says: a registry that is slow to serve signatures (or
				// never does) must not get an image past a signature rule. The verification
				// goes on, and its verdict answers the next try at once.
				if final {
					failures = append(failures, fmt.Sprintf("%s: %s: signatures not verified in time; verification continues, try again", r.Image, r.Rule))
					unscannedOnly = false
				}
				continue
			}
			// An unscanned image is onUnscanned's to decide.
			if (r.Failed || r.NotEvaluable) && r.Reason != policy.ReasonNotScanned {
				failures = append(failures, r.String())
				unscannedOnly = false
			}
		}
		if len(failures) == 0 {
			d.Audit[p.Ref] = "allowed"
			continue
		}
		d.Audit[p.Ref] = strings.Join(failures, "; ")
		switch p.Enforcement {
		case securityv1alpha1.EnforcementEnforce:
			denials = append(denials, fmt.Sprintf("%s: %s", p.Ref, strings.Join(failures, "; ")))
			onlyUnscanned = onlyUnscanned && unscannedOnly
		case securityv1alpha1.EnforcementWarn:
			for _, f := range failures {
				d.Warnings = append(d.Warnings, fmt.Sprintf("%s: %s", p.Ref, f))
			}
		}
	}
	if len(denials) > 0 {
		sort.Strings(denials)
		d.Allowed = false
		d.OnlyUnscanned = onlyUnscanned
		d.Message = "denied by ImageGuard: " + strings.Join(denials, " | ")
	}
	return d
}
