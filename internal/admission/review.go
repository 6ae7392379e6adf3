package admission

import (
	"context"
	"slices"
	"time"

	"k8s.io/utils/clock"

	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/workload"
)

// Endpoints, as the admission metrics label them.
const (
	EndpointValidate    = "validate"
	EndpointImagePolicy = "imagepolicy"
)

// OptOutLabel on a namespace with the value "disabled" turns admission checks off there.
const OptOutLabel = "imageguard.dev/admission"

// ScanQueue starts the scans of images admission saw unscanned.
type ScanQueue interface {
	QueueScans(namespace string, images []policy.Image)
}

// Reviewer is what both endpoints share: the namespace opt-out, the decision, queueing the
// scans of unscanned images, and the metrics.
type Reviewer struct {
	State State
	// Queue is told of unscanned images; nil queues nothing.
	Queue ScanQueue
	// ExemptNamespaces are never checked; kube-system always is.
	ExemptNamespaces []string
	Clock            clock.PassiveClock
}

// Review decides on the containers of a workload; dryRun requests queue no scan.
func (r *Reviewer) Review(ctx context.Context, endpoint, namespace string, labels map[string]string, containers []workload.Container, dryRun bool) (Decision, error) {
	start := time.Now()
	d, err := r.review(ctx, namespace, labels, containers, dryRun)
	result := "allowed"
	switch {
	case err != nil:
		result = "error"
	case !d.Allowed:
		result = "denied"
	case d.Exempt:
		result = "exempt"
	case len(d.Warnings) > 0:
		result = "warned"
	}
	metrics.AdmissionDecisions.WithLabelValues(endpoint, result).Inc()
	metrics.AdmissionDuration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
	return d, err
}

func (r *Reviewer) review(ctx context.Context, namespace string, labels map[string]string, containers []workload.Container, dryRun bool) (Decision, error) {
	if namespace == "kube-system" || slices.Contains(r.ExemptNamespaces, namespace) || r.State.OptedOut(ctx, namespace) {
		return Decision{Allowed: true, Exempt: true}, nil
	}
	d, err := Decide(ctx, r.State, namespace, labels, containers, r.Clock.Now())
	if err != nil {
		return d, err
	}
	if len(d.Unscanned) > 0 && r.Queue != nil && !dryRun {
		r.Queue.QueueScans(namespace, d.Unscanned)
	}
	return d, nil
}
