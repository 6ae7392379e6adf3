package admission

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/workload"
)

// Endpoints, as the admission metrics label them.
const (
	EndpointValidate    = "validate"
	EndpointImagePolicy = "imagepolicy"
)

// OptOutLabel on a namespace with the value "disabled" turns the validating webhook off there.
// The ImagePolicyWebhook backend ignores it: only the operator's flags exempt a namespace there.
const OptOutLabel = "imageguard.dev/admission"

// FailurePolicy says what an internal error (a cache that cannot answer, say) answers, as the
// webhook configuration's failurePolicy says what the API server does when ImageGuard cannot.
type FailurePolicy string

// The failure policies.
const (
	// FailureIgnore admits, with a Warning naming the error.
	FailureIgnore FailurePolicy = "Ignore"
	// FailureFail refuses, naming the error.
	FailureFail FailurePolicy = "Fail"
)

// DefaultControllerUsers are the users kube-controller-manager creates pods, ReplicaSets and Jobs
// as: its own identity, or, with --use-service-account-credentials, each controller's service
// account.
var DefaultControllerUsers = []string{
	"system:kube-controller-manager",
	"system:serviceaccount:kube-system:replicaset-controller",
	"system:serviceaccount:kube-system:statefulset-controller",
	"system:serviceaccount:kube-system:daemon-set-controller",
	"system:serviceaccount:kube-system:job-controller",
	"system:serviceaccount:kube-system:deployment-controller",
	"system:serviceaccount:kube-system:cronjob-controller",
}

// ErrBadRequest is a request that can never be judged (no namespace, say): a 400.
var ErrBadRequest = errors.New("bad request")

// ScanQueue starts the scans of images admission saw unscanned.
type ScanQueue interface {
	QueueScans(namespace string, images []policy.Image)
}

// Request is what an endpoint asks the Reviewer.
type Request struct {
	Endpoint  string
	Namespace string
	// Labels are the object's own; PodLabels those of its pods (its template's).
	Labels, PodLabels map[string]string
	Containers        []workload.Container
	// PodSpec is the pod (template) spec, whose pull secrets tag lookups use; nil for ImageReview.
	PodSpec *corev1.PodSpec
	// User made the request and Object is what it creates (the validating webhook only): a
	// controller's object whose controlling owner runs the same images is not judged again.
	User       string
	Object     client.Object
	ObjectKind schema.GroupKind
	DryRun     bool
	// OnlyPolicies, when set, are the Refs of the only policies that judge the request (an update
	// whose new labels bring unchanged images under them); nil is every policy.
	OnlyPolicies []string
}

// Reviewer is what both endpoints share: exemptions, objects made by the cluster's controllers,
// the decision within its budget, the failure policy, queueing the scans of unscanned images,
// and the metrics.
type Reviewer struct {
	State State
	// Owners reads the controlling owners of objects (the manager's cache); LiveOwners reads one
	// the cache does not show yet (a ReplicaSet made a moment ago, whose pods come at once).
	Owners, LiveOwners client.Reader
	// Queue is told of unscanned images; nil queues nothing.
	Queue ScanQueue
	// ExemptNamespaces are never checked; kube-system always is.
	ExemptNamespaces []string
	// Budget bounds a decision, tag lookups included (0: no bound); it must be well under the
	// webhook's timeout, so that ImageGuard answers before the API server gives up.
	Budget time.Duration
	// FailurePolicy is what an internal error answers; the webhook configuration's should match.
	FailurePolicy FailurePolicy
	// ControllerUsers make objects whose controlling owner ImageGuard judged at its template.
	ControllerUsers []string
	Clock           clock.PassiveClock
}

// Review decides on req. An error is ErrBadRequest (answer 400); internal errors are answered as
// the failure policy says.
func (r *Reviewer) Review(ctx context.Context, req Request) (Decision, error) {
	start := r.Clock.Now()
	if r.Budget > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.Budget)
		defer cancel()
	}
	d, err := r.review(ctx, req)
	result := "allowed"
	switch {
	case errors.Is(err, ErrBadRequest):
		result = "error"
	case err != nil:
		result = "error"
		d = r.failed(err)
		err = nil
	case !d.Allowed:
		result = "denied"
	case d.Exempt:
		result = "exempt"
	case len(d.Warnings) > 0:
		result = "warned"
	}
	metrics.AdmissionDecisions.WithLabelValues(req.Endpoint, result).Inc()
	metrics.AdmissionDuration.WithLabelValues(req.Endpoint).Observe(r.Clock.Since(start).Seconds())
	return d, err
}

func (r *Reviewer) review(ctx context.Context, req Request) (Decision, error) {
	if req.Namespace == "" {
		return Decision{}, fmt.Errorf("%w: the request names no namespace", ErrBadRequest)
	}
	if req.Namespace == "kube-system" || slices.Contains(r.ExemptNamespaces, req.Namespace) ||
		(req.Endpoint == EndpointValidate && r.State.OptedOut(ctx, req.Namespace)) {
		return Decision{Allowed: true, Exempt: true}, nil
	}
	if owner, ok := r.judgedOwner(ctx, req); ok {
		return Decision{Allowed: true, Warnings: []string{fmt.Sprintf(
			"ImageGuard: not judged again: made by the cluster's controllers for %s, which runs the same images and was judged when it was created or changed",
			owner)}}, nil
	}
	d, err := Decide(ctx, r.State, req, r.Clock.Now())
	if err != nil {
		return d, err
	}
	// Only an admitted request starts scans, or one refused for nothing but waiting for them: a
	// refused request must not make ImageGuard pull from whatever host it names.
	if r.Queue != nil && (d.Allowed || d.OnlyUnscanned) {
		switch {
		case !req.DryRun:
			r.Queue.QueueScans(req.Namespace, d.Unscanned)
		case req.Endpoint == EndpointImagePolicy:
			// An ImageReview queues only the report of a scanned digest's image for another
			// platform, from the repository it was scanned from (whatever host the review
			// names): nothing else would ever make that report (no pod runs it until
			// admitted), and the pod would be refused for ever.
			r.Queue.QueueScans(req.Namespace, knownRepositories(req.Namespace, d.PlatformGaps))
		}
	}
	return d, nil
}

// maxQueuedGaps bounds the platform reports one ImageReview queues.
const maxQueuedGaps = 16

// knownRepositories returns the gaps, at most maxQueuedGaps, each named by the repository its
// digest was scanned from in namespace (a review must not get a scan in its namespace of another
// namespace's image); the others are left out.
func knownRepositories(namespace string, gaps []policy.Image) []policy.Image {
	var out []policy.Image
	for _, g := range gaps {
		repo := repositoryIn(g.Report, namespace)
		if repo == "" || len(out) == maxQueuedGaps {
			continue
		}
		g.Repository, g.Tag = repo, ""
		out = append(out, g)
	}
	return out
}

// repositoryIn returns the repository r's digest was scanned from in namespace, on any of its
// platforms; "" when it was not scanned there.
func repositoryIn(r *policy.Report, namespace string) string {
	if r == nil {
		return ""
	}
	if r.Namespace == namespace && r.Repository != "" {
		return r.Repository
	}
	for _, o := range r.Others {
		if repo := repositoryIn(o, namespace); repo != "" {
			return repo
		}
	}
	return ""
}

// policiesAdded returns the Refs of the policies that apply in namespace to the label sets of
// after and did not apply to those of before. all is true when they cannot be told (an error): the
// update is then judged by every policy.
func (r *Reviewer) policiesAdded(ctx context.Context, namespace string, sets [2][]map[string]string) (added []string, all bool) {
	if slices.EqualFunc(sets[0], sets[1], maps.Equal) {
		return nil, false
	}
	before, err := r.State.Policies(ctx, namespace, sets[0]...)
	if err != nil {
		return nil, true
	}
	after, err := r.State.Policies(ctx, namespace, sets[1]...)
	if err != nil {
		return nil, true
	}
	for _, p := range after {
		if !slices.ContainsFunc(before, func(q *workload.Policy) bool { return q.Ref == p.Ref }) {
			added = append(added, p.Ref)
		}
	}
	return added, false
}

// enforces reports whether a policy with enforcement Enforce applies in namespace (to any
// workload), unless the namespace is exempt; an error counts as yes.
func (r *Reviewer) enforces(ctx context.Context, namespace string) bool {
	if namespace == "kube-system" || slices.Contains(r.ExemptNamespaces, namespace) || r.State.OptedOut(ctx, namespace) {
		return false
	}
	policies, err := r.State.Policies(ctx, namespace)
	if err != nil {
		return true
	}
	return slices.ContainsFunc(policies, func(p *workload.Policy) bool { return p.Enforcement == securityv1alpha1.EnforcementEnforce })
}

// failed answers an internal error as the failure policy says.
func (r *Reviewer) failed(err error) Decision {
	if r.FailurePolicy == FailureIgnore {
		return Decision{Allowed: true, Warnings: []string{fmt.Sprintf(
			"ImageGuard could not evaluate the image policies (%v); admitted, as its failure policy is Ignore", err)}}
	}
	return Decision{Message: fmt.Sprintf("denied by ImageGuard: the image policies could not be evaluated (%v); refused, as its failure policy is Fail", err)}
}

// ownedKinds are, for each kind the cluster's controllers make, the kinds of controlling owner
// whose pod template ImageGuard judged: a ReplicaSet's Deployment, a Job's CronJob, a pod's
// ReplicaSet, StatefulSet, DaemonSet or Job.
var ownedKinds = map[schema.GroupKind][]schema.GroupKind{
	{Kind: "Pod"}: {
		{Group: "apps", Kind: "ReplicaSet"}, {Group: "apps", Kind: "StatefulSet"},
		{Group: "apps", Kind: "DaemonSet"}, {Group: "batch", Kind: "Job"},
	},
	{Group: "apps", Kind: "ReplicaSet"}: {{Group: "apps", Kind: "Deployment"}},
	{Group: "batch", Kind: "Job"}:       {{Group: "batch", Kind: "CronJob"}},
}

// judgedOwner reports whether req creates an object for its controlling owner: the user is one of
// the cluster's controllers, the owner is of a kind judged at its template, it exists (by UID),
// and its template runs exactly the request's containers. It returns the owner's name. Anything
// else (another user, other images, an owner that does not exist) is judged as it is.
func (r *Reviewer) judgedOwner(ctx context.Context, req Request) (string, bool) {
	if req.Object == nil || r.Owners == nil || !slices.Contains(r.ControllerUsers, req.User) {
		return "", false
	}
	ref := metav1.GetControllerOf(req.Object)
	if ref == nil {
		return "", false
	}
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil {
		return "", false
	}
	ownerKind := schema.GroupKind{Group: gv.Group, Kind: ref.Kind}
	if !slices.Contains(ownedKinds[req.ObjectKind], ownerKind) {
		return "", false
	}
	kind, ok := workload.KindOf(ownerKind.Group, ownerKind.Kind)
	if !ok {
		return "", false
	}
	owner := kind.New()
	key := client.ObjectKey{Namespace: req.Namespace, Name: ref.Name}
	err = r.Owners.Get(ctx, key, owner)
	if apierrors.IsNotFound(err) && r.LiveOwners != nil {
		err = r.LiveOwners.Get(ctx, key, owner)
	}
	if err != nil || owner.GetUID() != ref.UID {
		return "", false
	}
	if !slices.Equal(workload.Containers(kind.PodSpec(owner)), req.Containers) && !r.revisionRuns(ctx, req, owner) {
		return "", false
	}
	return ref.Kind + "/" + ref.Name, true
}

// revisionRuns reports whether req, a pod of a StatefulSet, runs exactly the containers of the
// StatefulSet's revision its controller-revision-hash label names: during a partitioned rolling
// update, the pods below the partition are made from the current revision, not the template.
func (r *Reviewer) revisionRuns(ctx context.Context, req Request, owner client.Object) bool {
	sts, ok := owner.(*appsv1.StatefulSet)
	name := req.Object.GetLabels()[appsv1.ControllerRevisionHashLabelKey]
	if !ok || name == "" || r.LiveOwners == nil {
		return false
	}
	rev := &appsv1.ControllerRevision{}
	if err := r.LiveOwners.Get(ctx, client.ObjectKey{Namespace: req.Namespace, Name: name}, rev); err != nil {
		return false
	}
	if ref := metav1.GetControllerOf(rev); ref == nil || ref.UID != sts.UID {
		return false
	}
	// A StatefulSet's revision holds the patch of its spec.template.
	var patch struct {
		Spec struct {
			Template corev1.PodTemplateSpec `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(rev.Data.Raw, &patch); err != nil {
		return false
	}
	return slices.Equal(workload.Containers(&patch.Spec.Template.Spec), req.Containers)
}
