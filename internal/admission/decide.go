// Package admission decides at admission time whether images may run, with the same policy
// engine as the controllers, from in-memory state only: it never reaches a registry on the request
// path. It serves Kubernetes' ImagePolicyWebhook (ImageReview) and, in the validating webhook,
// pods and pod templates.
package admission

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/workload"
)

// State is the in-memory view admission decides from: the policies that apply to a namespace and
// workload labels, and the reports of images.
type State interface {
	Policies(ctx context.Context, namespace string, labels map[string]string) ([]*workload.Policy, error)
	// Report returns the digest of an image (empty when it cannot be told) and its scan report
	// as seen from a namespace (nil when it was never scanned).
	Report(ctx context.Context, namespace string, img policy.Image) (digest string, report *policy.Report)
	// OptedOut reports whether a namespace turned admission checks off (OptOutLabel).
	OptedOut(ctx context.Context, namespace string) bool
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
	// Unscanned are images never scanned, with their digest when known; their scan should be
	// queued at once.
	Unscanned []policy.Image
	// Audit holds per-policy results for the audit log.
	Audit map[string]string
}

// Decide judges containers of a workload in namespace with labels at time now.
func Decide(ctx context.Context, state State, namespace string, labels map[string]string, containers []workload.Container, now time.Time) (Decision, error) {
	policies, err := state.Policies(ctx, namespace, labels)
	if err != nil {
		return Decision{}, err
	}
	d := Decision{Allowed: true, Audit: map[string]string{}}
	images := make([]policy.Image, 0, len(containers))
	for _, c := range containers {
		img, err := parse(c)
		if err != nil {
			d.Allowed = false
			d.Message = fmt.Sprintf("denied by ImageGuard: container %s: %v", c.Name, err)
			return d, nil
		}
		digest, report := state.Report(ctx, namespace, img)
		img.Report = report
		if report == nil {
			unscanned := img
			if unscanned.Digest == "" {
				unscanned.Digest = digest
			}
			d.Unscanned = append(d.Unscanned, unscanned)
		}
		images = append(images, img)
	}
	var denials []string
	for _, p := range policies {
		matched := p.MatchImages(images)
		if len(matched) == 0 {
			continue
		}
		var failures []string
		for _, img := range matched {
			if img.Report == nil && p.OnUnscanned == securityv1alpha1.UnscannedDeny {
				failures = append(failures, fmt.Sprintf("%s: not scanned yet (onUnscanned: Deny)", img.Reference()))
			}
		}
		for _, r := range p.Rules.Evaluate(matched, now).Results {
			// An unscanned image is onUnscanned's to decide; its scan is queued.
			if (r.Failed || r.NotEvaluable) && r.Reason != policy.ReasonNotScanned {
				failures = append(failures, r.String())
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
		case securityv1alpha1.EnforcementWarn:
			for _, f := range failures {
				d.Warnings = append(d.Warnings, fmt.Sprintf("%s: %s", p.Ref, f))
			}
		}
	}
	if len(denials) > 0 {
		sort.Strings(denials)
		d.Allowed = false
		d.Message = "denied by ImageGuard: " + strings.Join(denials, " | ")
	}
	return d, nil
}

func parse(c workload.Container) (policy.Image, error) {
	img, err := policy.ParseImage(c.Image)
	img.Container = c.Name
	return img, err
}
