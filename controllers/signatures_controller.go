package controllers

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/signature"
	"github.com/imageguard/imageguard/internal/workload"
)

// SignatureReconciler keeps each report's status.signatures: the verdict of every signature
// authority set of the policies that apply to its image in its namespace, verified through the
// shared cache (admission fills it too), again at the recheck interval. It writes only
// status.signatures, with a merge patch, and only when a verdict changed or its check time is
// older than the refresh interval.
type SignatureReconciler struct {
	Client   client.Client
	Gatherer *workload.Gatherer
	Verifier *signature.Verifier
	// Keychain returns the pull credentials of the pods that run a report's image.
	Keychain        func(ctx context.Context, report *securityv1alpha1.ImageScanReport) (authn.Keychain, error)
	Clock           clock.PassiveClock
	RefreshInterval time.Duration
	Timeout         time.Duration

	// verdicts carries the keys whose verdict changed (made at admission, usually), so that their
	// reports say so at once rather than at their next recheck.
	verdicts chan event.TypedGenericEvent[signature.Key]
}

// VerdictChanged queues the reports of k's digest in k's namespace. It never blocks (it is the
// Verifier's OnVerdict): when the queue is full, the reports say it at their next recheck.
func (r *SignatureReconciler) VerdictChanged(k signature.Key, _ signature.Verdict) {
	select {
	case r.verdicts <- event.TypedGenericEvent[signature.Key]{Object: k}:
	default:
	}
}

// Reconcile verifies the report's signatures under each authority set that applies and writes
// status.signatures when it changed.
func (r *SignatureReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	report := &securityv1alpha1.ImageScanReport{}
	if err := r.Client.Get(ctx, req.NamespacedName, report); err != nil || !report.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	sets, err := r.authorities(ctx, report)
	if err != nil {
		return ctrl.Result{}, err
	}
	keychain := workload.LazyKeychain(func() (authn.Keychain, error) { return r.Keychain(ctx, report) })
	checks := make([]securityv1alpha1.SignatureCheck, 0, len(sets))
	now := r.Clock.Now()
	next := time.Duration(0)
	for _, s := range sets {
		key := signature.Key{Namespace: report.Namespace, Digest: report.Spec.Digest, Authorities: s.a.ID}
		verdict, ok := r.Verifier.Check(ctx, key, s.a, report.Spec.Image, keychain, 0)
		if !ok {
			if err := ctx.Err(); err != nil {
				return ctrl.Result{}, err
			}
			// No verdict yet (too many verifications in flight, or one made with keys since
			// rotated): again in a minute.
			return ctrl.Result{RequeueAfter: time.Minute}, nil
		}
		checks = append(checks, securityv1alpha1.SignatureCheck{
			Authorities: s.a.ID, Policy: s.policy, Verified: verdict.Verified, Reason: verdict.Reason,
			Message: verdict.Message, SignedBy: verdict.Signers, CheckedAt: metav1.NewTime(verdict.CheckedAt),
		})
		due := verdict.CheckedAt.Add(r.Verifier.FreshFor(verdict)).Sub(now)
		if due <= 0 {
			due = time.Minute // a verified verdict kept through a failing registry
		}
		if next == 0 || due < next {
			next = due
		}
	}
	if next > 0 {
		next = max(time.Second, next+time.Duration(rand.Int64N(int64(next)/10+1))) //nolint:gosec // jitter
	}
	if !r.due(report.Status.Signatures, checks, now) {
		return ctrl.Result{RequeueAfter: next}, nil
	}
	if len(checks) == 0 {
		checks = nil
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"signatures": checks}})
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.Client.Status().Patch(ctx, report, client.RawPatch(types.MergePatchType, patch)); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// due reports whether checks must be written over written: a verdict changed, or one was
// written longer than the refresh interval ago.
func (r *SignatureReconciler) due(written, checks []securityv1alpha1.SignatureCheck, now time.Time) bool {
	if len(written) != len(checks) {
		return true
	}
	for i := range checks {
		a, b := written[i], checks[i]
		if !now.Before(a.CheckedAt.Add(r.RefreshInterval)) && b.CheckedAt.After(a.CheckedAt.Time) {
			return true
		}
		a.CheckedAt, b.CheckedAt = metav1.Time{}, metav1.Time{}
		if !reflect.DeepEqual(a, b) {
			return true
		}
	}
	return false
}

type authoritySet struct {
	a      *policy.SignatureAuthorities
	policy string
}

// authorities returns the distinct authority sets of the valid policies of the report's namespace
// that match its image, ordered by ID (at most MaxSignatureChecks).
func (r *SignatureReconciler) authorities(ctx context.Context, report *securityv1alpha1.ImageScanReport) ([]authoritySet, error) {
	policies, err := r.Gatherer.PoliciesFor(ctx, report.Namespace)
	if err != nil {
		return nil, err
	}
	img := policy.Image{Repository: report.Spec.Image, Digest: report.Spec.Digest}
	if len(report.Spec.Tags) > 0 {
		img.Tag = report.Spec.Tags[0]
	}
	byID := map[string]authoritySet{}
	for _, p := range policies {
		a := p.Rules.Signatures()
		if a == nil || len(p.MatchImages([]policy.Image{img})) == 0 {
			continue
		}
		if s, ok := byID[a.ID]; !ok || p.Ref < s.policy {
			byID[a.ID] = authoritySet{a: a, policy: p.Ref}
		}
	}
	out := make([]authoritySet, 0, len(byID))
	for _, s := range byID {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].a.ID < out[j].a.ID })
	if len(out) > securityv1alpha1.MaxSignatureChecks {
		out = out[:securityv1alpha1.MaxSignatureChecks]
	}
	return out, nil
}

// signatureRuleChanged passes policy events that may change which authority sets apply.
func signatureRuleChanged() predicate.Funcs {
	rule := func(obj client.Object) *securityv1alpha1.PolicyRules {
		switch p := obj.(type) {
		case *securityv1alpha1.ImagePolicy:
			return &p.Spec.Rules
		case *securityv1alpha1.ClusterImagePolicy:
			return &p.Spec.Rules
		}
		return nil
	}
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			a, b := rule(e.ObjectOld), rule(e.ObjectNew)
			if a == nil || b == nil {
				return true
			}
			return !reflect.DeepEqual(a.Signatures, b.Signatures) || e.ObjectOld.GetGeneration() != e.ObjectNew.GetGeneration() && (a.Signatures != nil || b.Signatures != nil)
		},
	}
}

// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get

// SetupWithManager registers the controller: reports (created, or their spec changed), the
// policies whose signature rule or match changed, and the verdicts that changed (VerdictChanged).
func (r *SignatureReconciler) SetupWithManager(mgr ctrl.Manager) error {
	reportsOf := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
		var opts []client.ListOption
		if obj.GetNamespace() != "" {
			opts = append(opts, client.InNamespace(obj.GetNamespace()))
		}
		reqs, _ := reportRequests(ctx, r.Client, opts...)
		return reqs
	})
	reportsOfKey := handler.TypedEnqueueRequestsFromMapFunc(func(ctx context.Context, k signature.Key) []reconcile.Request {
		reqs, _ := reportRequests(ctx, r.Client, client.InNamespace(k.Namespace), client.MatchingFields{workload.IndexReportDigest: k.Digest})
		return reqs
	})
	if r.verdicts == nil {
		r.verdicts = make(chan event.TypedGenericEvent[signature.Key], 1024)
	}
	return ctrl.NewControllerManagedBy(mgr).Named("imagescanreport-signatures").
		For(&securityv1alpha1.ImageScanReport{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WatchesRawSource(source.Channel(r.verdicts, reportsOfKey)).
		Watches(&securityv1alpha1.ImagePolicy{}, reportsOf, builder.WithPredicates(signatureRuleChanged())).
		Watches(&securityv1alpha1.ClusterImagePolicy{}, reportsOf, builder.WithPredicates(signatureRuleChanged())).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4, ReconciliationTimeout: r.Timeout}).
		Complete(r)
}
