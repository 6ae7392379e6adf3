package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	wgpolicyv1alpha2 "github.com/imageguard/imageguard/api/wgpolicyk8s/v1alpha2"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/workload"
)

// PolicyReportName is the name of the first PolicyReport ImageGuard keeps in each namespace; the
// results that do not fit in it go to imageguard-2, imageguard-3, and so on.
const PolicyReportName = "imageguard"

// DefaultPolicyReportMaxBytes bounds the encoded results of one PolicyReport, well under etcd's
// 1.5 MiB object limit.
const DefaultPolicyReportMaxBytes = 512 << 10

// managedByLabel marks the PolicyReports ImageGuard writes, so stale parts can be found.
var managedByLabel = map[string]string{"app.kubernetes.io/managed-by": "imageguard"}

// policyReportName is the name of the namespace's part-th PolicyReport (from 1).
func policyReportName(part int) string {
	if part == 1 {
		return PolicyReportName
	}
	return fmt.Sprintf("%s-%d", PolicyReportName, part)
}

// PolicyReportReconciler keeps one wgpolicyk8s.io PolicyReport per namespace: a result per
// workload, policy and rule, for Policy Reporter and other dashboards. All results concern
// namespaced workloads, so no ClusterPolicyReport is written.
type PolicyReportReconciler struct {
	Client   client.Client
	Gatherer *workload.Gatherer
	Clock    clock.PassiveClock
	// Timeout bounds one reconcile; 0 means none.
	Timeout time.Duration
	// MaxBytes bounds the encoded results of one PolicyReport; 0 means
	// DefaultPolicyReportMaxBytes.
	MaxBytes int
}

// +kubebuilder:rbac:groups=wgpolicyk8s.io,resources=policyreports,verbs=get;list;watch;create;update;patch;delete

// Reconcile rewrites the namespace's PolicyReport when its results changed.
func (r *PolicyReportReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: req.Name}, ns); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ns.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	results, next, err := r.results(ctx, ns)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.writeAll(ctx, ns.Name, results); err != nil {
		return ctrl.Result{}, err
	}
	if next.IsZero() {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{RequeueAfter: next.Sub(r.Clock.Now()) + time.Second}, nil
}

// results evaluates every policy that applies to the namespace over the workloads it matches
// there, one result per workload, policy and rule.
func (r *PolicyReportReconciler) results(ctx context.Context, ns *corev1.Namespace) ([]wgpolicyv1alpha2.PolicyReportResult, time.Time, error) {
	policies, err := r.Gatherer.PoliciesFor(ctx, ns.Name)
	if err != nil {
		return nil, time.Time{}, err
	}
	workloads, err := r.Gatherer.Workloads(ctx, ns.Name)
	if err != nil {
		return nil, time.Time{}, err
	}
	now := r.Clock.Now()
	stamp := metav1.Timestamp{Seconds: now.Unix()}
	var out []wgpolicyv1alpha2.PolicyReportResult
	var next time.Time
	for _, p := range policies {
		for _, w := range workloads {
			if !p.Matches(w) {
				continue
			}
			verdict := p.Rules.Evaluate(r.Gatherer.Images(ctx, w.Namespace, w.Containers), now)
			if !verdict.NextChange.IsZero() && (next.IsZero() || verdict.NextChange.Before(next)) {
				next = verdict.NextChange
			}
			out = append(out, ruleResults(p.Name, w, verdict, stamp)...)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Subjects[0].Name != b.Subjects[0].Name || a.Subjects[0].Kind != b.Subjects[0].Kind {
			return a.Subjects[0].Kind+"/"+a.Subjects[0].Name < b.Subjects[0].Kind+"/"+b.Subjects[0].Name
		}
		if a.Policy != b.Policy {
			return a.Policy < b.Policy
		}
		return a.Rule < b.Rule
	})
	return out, next, nil
}

// ruleResults folds a verdict into one result per rule: fail if any image fails it.
func ruleResults(policyName string, w workload.Workload, v policy.Verdict, stamp metav1.Timestamp) []wgpolicyv1alpha2.PolicyReportResult {
	byRule := map[string]*wgpolicyv1alpha2.PolicyReportResult{}
	var order []string
	for _, res := range v.Results {
		pr := byRule[res.Rule]
		if pr == nil {
			pr = &wgpolicyv1alpha2.PolicyReportResult{
				Source: "imageguard", Policy: policyName, Rule: res.Rule, Category: "Image Security",
				Severity: wgpolicyv1alpha2.Severity(res.Severity), Timestamp: stamp, Result: wgpolicyv1alpha2.ResultPass, Scored: true,
				Subjects: []corev1.ObjectReference{{
					APIVersion: w.APIVersion, Kind: w.Kind, Namespace: w.Namespace, Name: w.Name, UID: w.UID,
				}},
			}
			byRule[res.Rule] = pr
			order = append(order, res.Rule)
		}
		switch {
		case res.NotEvaluable:
			if pr.Result == wgpolicyv1alpha2.ResultPass {
				pr.Result = wgpolicyv1alpha2.ResultError
			}
		case res.Failed:
			pr.Result = wgpolicyv1alpha2.ResultFail
		default:
			continue
		}
		msg := res.Image + ": " + res.Message
		if pr.Description == "" {
			pr.Description = msg
		} else if len(pr.Description) < 1024 {
			pr.Description += "; " + msg
		}
	}
	out := make([]wgpolicyv1alpha2.PolicyReportResult, 0, len(order))
	for _, rule := range order {
		pr := byRule[rule]
		if pr.Result == wgpolicyv1alpha2.ResultPass {
			pr.Description = "all images pass"
		}
		out = append(out, *pr)
	}
	return out
}

// writeAll writes results across as many PolicyReports as their size needs, in order, and
// deletes the parts no longer needed.
func (r *PolicyReportReconciler) writeAll(ctx context.Context, namespace string, results []wgpolicyv1alpha2.PolicyReportResult) error {
	maxBytes := r.MaxBytes
	if maxBytes <= 0 {
		maxBytes = DefaultPolicyReportMaxBytes
	}
	parts := splitResults(results, maxBytes)
	for i, part := range parts {
		if err := r.write(ctx, namespace, policyReportName(i+1), part); err != nil {
			return err
		}
	}
	// Parts beyond those written are stale.
	kept := map[string]bool{}
	for i := range parts {
		kept[policyReportName(i+1)] = true
	}
	list := &wgpolicyv1alpha2.PolicyReportList{}
	if err := r.Client.List(ctx, list, client.InNamespace(namespace), client.MatchingLabels(managedByLabel)); err != nil {
		return err
	}
	for i := range list.Items {
		if rep := &list.Items[i]; !kept[rep.Name] && strings.HasPrefix(rep.Name, PolicyReportName) {
			if err := r.Client.Delete(ctx, rep); client.IgnoreNotFound(err) != nil {
				return err
			}
		}
	}
	return nil
}

// splitResults cuts results, in order, into parts whose encoded results are at most maxBytes
// each (a result larger than that alone makes a part). No results make no part.
func splitResults(results []wgpolicyv1alpha2.PolicyReportResult, maxBytes int) [][]wgpolicyv1alpha2.PolicyReportResult {
	var parts [][]wgpolicyv1alpha2.PolicyReportResult
	start, size := 0, 0
	for i := range results {
		raw, _ := json.Marshal(&results[i])
		n := len(raw) + 1
		if size+n > maxBytes && i > start {
			parts = append(parts, results[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(results) {
		parts = append(parts, results[start:])
	}
	return parts
}

// write creates or updates the PolicyReport name with results; an unchanged one (timestamps
// aside) is not written.
func (r *PolicyReportReconciler) write(ctx context.Context, namespace, name string, results []wgpolicyv1alpha2.PolicyReportResult) error {
	report := &wgpolicyv1alpha2.PolicyReport{}
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, report)
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	summary := wgpolicyv1alpha2.PolicyReportSummary{}
	for _, res := range results {
		switch res.Result {
		case wgpolicyv1alpha2.ResultPass:
			summary.Pass++
		case wgpolicyv1alpha2.ResultFail:
			summary.Fail++
		case wgpolicyv1alpha2.ResultWarn:
			summary.Warn++
		case wgpolicyv1alpha2.ResultError:
			summary.Error++
		default:
			summary.Skip++
		}
	}
	if exists && equalResults(report.Results, results) {
		return nil
	}
	if !exists {
		report = &wgpolicyv1alpha2.PolicyReport{ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: namespace, Labels: maps.Clone(managedByLabel),
		}, Summary: summary, Results: results}
		return r.Client.Create(ctx, report)
	}
	before := report.DeepCopy()
	report.Summary, report.Results = summary, results
	_, err = writeObject(ctx, r.Client, before, report)
	return err
}

// equalResults compares results ignoring their timestamps.
func equalResults(a, b []wgpolicyv1alpha2.PolicyReportResult) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		x.Timestamp, y.Timestamp = metav1.Timestamp{}, metav1.Timestamp{}
		if !equality.Semantic.DeepEqual(x, y) {
			return false
		}
	}
	return true
}

// SetupWithManager watches policies, workloads and reports, each event queueing the namespaces
// whose report it may change.
func (r *PolicyReportReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	toNamespace := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: obj.GetNamespace()}}}
	})
	allNamespaces := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []reconcile.Request {
		list := &corev1.NamespaceList{}
		if err := r.Client.List(ctx, list); err != nil {
			return nil
		}
		reqs := make([]reconcile.Request, 0, len(list.Items))
		for _, ns := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: ns.Name}})
		}
		return reqs
	})
	b := ctrl.NewControllerManagedBy(mgr).Named("policyreport").
		For(&corev1.Namespace{}).
		WithOptions(controller.Options{ReconciliationTimeout: r.Timeout}).
		Watches(&securityv1alpha1.ClusterImagePolicy{}, allNamespaces)
	for _, obj := range append(workload.Objects(), &securityv1alpha1.ImagePolicy{}, &securityv1alpha1.ImageScanReport{}) {
		b = b.Watches(obj, toNamespace)
	}
	return b.Complete(r)
}

// policyReportsServed reports whether the API server serves wgpolicyk8s.io PolicyReports.
func policyReportsServed(mgr ctrl.Manager) bool {
	_, err := mgr.GetRESTMapper().RESTMapping(schema.GroupKind{Group: wgpolicyv1alpha2.GroupVersion.Group, Kind: "PolicyReport"}, wgpolicyv1alpha2.GroupVersion.Version)
	return err == nil
}
