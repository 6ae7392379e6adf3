package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	openreportsv1alpha1 "github.com/openreports/reports-api/apis/openreports.io/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
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

// PolicyReportReconciler keeps, per namespace, the same results (one per workload, policy and
// rule, for Policy Reporter, Kyverno's dashboards and others) in a wgpolicyk8s.io PolicyReport,
// an openreports.io Report, or both (Formats), each only while its CRD is installed: the CRDs are
// watched, so a kind installed after the start is written at once and one removed is no longer
// written. All results concern namespaced workloads, so no cluster-scoped report is written.
type PolicyReportReconciler struct {
	Client client.Client
	// Reader reads the reports (the manager's cache); Informers, when set, is where the informer
	// of a kind whose CRD was removed is stopped.
	Reader    client.Reader
	Informers cache.Informers
	Gatherer  *workload.Gatherer
	Clock     clock.PassiveClock
	// Formats are the report kinds written; nil means FormatWGPolicy.
	Formats []ReportFormat
	// Timeout bounds one reconcile; 0 means none.
	Timeout time.Duration
	// MaxBytes bounds the encoded results of one PolicyReport; 0 means
	// DefaultPolicyReportMaxBytes.
	MaxBytes int
}

// ReportFormat is a kind of policy report (--policy-reports).
type ReportFormat string

// The report formats.
const (
	// FormatWGPolicy is wgpolicyk8s.io/v1alpha2 PolicyReport.
	FormatWGPolicy ReportFormat = "wgpolicyk8s"
	// FormatOpenReports is openreports.io/v1alpha1 Report.
	FormatOpenReports ReportFormat = "openreports"
)

// ParseReportFormats reads --policy-reports: a comma list of formats, or "none".
func ParseReportFormats(s string) ([]ReportFormat, error) {
	var out []ReportFormat
	for _, f := range strings.Split(s, ",") {
		switch f := ReportFormat(strings.TrimSpace(f)); f {
		case FormatWGPolicy, FormatOpenReports:
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		case "none", "":
		default:
			return nil, fmt.Errorf("unknown policy report format %q (known: wgpolicyk8s, openreports, none)", f)
		}
	}
	return out, nil
}

// reportKind is how one format's reports are read and written.
type reportKind struct {
	format ReportFormat
	// crd is the name of the CRD that serves it.
	crd     string
	newObj  func() client.Object
	newList func() client.ObjectList
	// results reads an object's results; set writes them.
	results func(client.Object) []wgpolicyv1alpha2.PolicyReportResult
	set     func(client.Object, wgpolicyv1alpha2.PolicyReportSummary, []wgpolicyv1alpha2.PolicyReportResult)
}

var reportKinds = map[ReportFormat]reportKind{
	FormatWGPolicy: {
		format: FormatWGPolicy, crd: "policyreports.wgpolicyk8s.io",
		newObj: func() client.Object { return &wgpolicyv1alpha2.PolicyReport{} }, newList: func() client.ObjectList { return &wgpolicyv1alpha2.PolicyReportList{} },
		results: func(o client.Object) []wgpolicyv1alpha2.PolicyReportResult {
			return o.(*wgpolicyv1alpha2.PolicyReport).Results
		},
		set: func(o client.Object, s wgpolicyv1alpha2.PolicyReportSummary, r []wgpolicyv1alpha2.PolicyReportResult) {
			o.(*wgpolicyv1alpha2.PolicyReport).Summary, o.(*wgpolicyv1alpha2.PolicyReport).Results = s, r
		},
	},
	FormatOpenReports: {
		format: FormatOpenReports, crd: "reports.openreports.io",
		newObj: func() client.Object { return &openreportsv1alpha1.Report{} }, newList: func() client.ObjectList { return &openreportsv1alpha1.ReportList{} },
		results: func(o client.Object) []wgpolicyv1alpha2.PolicyReportResult {
			var out []wgpolicyv1alpha2.PolicyReportResult
			for _, r := range o.(*openreportsv1alpha1.Report).Results {
				out = append(out, wgpolicyv1alpha2.PolicyReportResult{
					Source: r.Source, Policy: r.Policy, Rule: r.Rule, Category: r.Category, Severity: wgpolicyv1alpha2.Severity(r.Severity),
					Timestamp: r.Timestamp, Result: wgpolicyv1alpha2.Result(r.Result), Scored: r.Scored, Subjects: r.Subjects,
					Description: r.Description, Properties: r.Properties,
				})
			}
			return out
		},
		set: func(o client.Object, s wgpolicyv1alpha2.PolicyReportSummary, results []wgpolicyv1alpha2.PolicyReportResult) {
			rep := o.(*openreportsv1alpha1.Report)
			rep.Source = resultSource
			rep.Summary = openreportsv1alpha1.ReportSummary{Pass: s.Pass, Fail: s.Fail, Warn: s.Warn, Error: s.Error, Skip: s.Skip}
			rep.Results = make([]openreportsv1alpha1.ReportResult, 0, len(results))
			for _, r := range results {
				rep.Results = append(rep.Results, openreportsv1alpha1.ReportResult{
					Source: r.Source, Policy: r.Policy, Rule: r.Rule, Category: r.Category, Severity: openreportsv1alpha1.ResultSeverity(r.Severity),
					Timestamp: r.Timestamp, Result: openreportsv1alpha1.Result(r.Result), Scored: r.Scored, Subjects: r.Subjects,
					Description: r.Description, Properties: r.Properties,
				})
			}
		},
	},
}

// resultSource is the source of every result and OpenReports report ImageGuard writes.
const resultSource = "imageguard"

// +kubebuilder:rbac:groups=wgpolicyk8s.io,resources=policyreports,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=openreports.io,resources=reports,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apiextensions.k8s.io,resources=customresourcedefinitions,verbs=get;list;watch

// Reconcile rewrites the namespace's PolicyReport when its results changed.
func (r *PolicyReportReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: req.Name}, ns); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ns.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	var kinds []reportKind
	for _, f := range r.Formats {
		served, _, err := r.served(ctx, reportKinds[f].crd)
		if err != nil {
			return ctrl.Result{}, err
		}
		if served {
			kinds = append(kinds, reportKinds[f])
		} else if r.Informers != nil {
			// Its CRD went: the informer would only fail to list from now on.
			if err := r.Informers.RemoveInformer(ctx, reportKinds[f].newObj()); err != nil {
				return ctrl.Result{}, err
			}
		}
	}
	if len(kinds) == 0 {
		return ctrl.Result{}, nil
	}
	results, next, err := r.results(ctx, ns)
	if err != nil {
		return ctrl.Result{}, err
	}
	retry := false
	for _, kind := range kinds {
		err := r.writeAll(ctx, kind, ns.Name, results)
		switch {
		case err == nil:
		case meta.IsNoMatchError(err) || apierrors.IsNotFound(err):
			// A CRD installed a moment ago is not in discovery yet (tried again shortly); one
			// removed a moment ago is no longer watched as served: nothing to write either way.
			// A CRD that has been there a while and still serves nothing is an error (backoff).
			served, created, serr := r.served(ctx, kind.crd)
			if serr == nil && served && time.Since(created) > crdSettleTime {
				return ctrl.Result{}, fmt.Errorf("the %s CRD is installed but its kind is not served: %w", kind.crd, err)
			}
			if serr == nil && served {
				retry = true
			}
		default:
			return ctrl.Result{}, fmt.Errorf("writing the %s reports: %w", kind.format, err)
		}
	}
	if retry {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
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
				Source: resultSource, Policy: policyName, Rule: res.Rule, Category: "Image Security",
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
		if pr.Properties == nil && res.Reason != "" {
			// The typed reason of the rule's first failure (SignatureMissing, UntrustedRegistry, ...).
			pr.Properties = map[string]string{"reason": res.Reason}
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
func (r *PolicyReportReconciler) writeAll(ctx context.Context, kind reportKind, namespace string, results []wgpolicyv1alpha2.PolicyReportResult) error {
	maxBytes := r.MaxBytes
	if maxBytes <= 0 {
		maxBytes = DefaultPolicyReportMaxBytes
	}
	parts := splitResults(results, maxBytes)
	for i, part := range parts {
		if err := r.write(ctx, kind, namespace, policyReportName(i+1), part); err != nil {
			return err
		}
	}
	// Parts beyond those written are stale.
	kept := map[string]bool{}
	for i := range parts {
		kept[policyReportName(i+1)] = true
	}
	list := kind.newList()
	if err := r.Reader.List(ctx, list, client.InNamespace(namespace), client.MatchingLabels(managedByLabel)); err != nil {
		return err
	}
	reps, err := meta.ExtractList(list)
	if err != nil {
		return err
	}
	for _, item := range reps {
		rep := item.(client.Object)
		if !kept[rep.GetName()] && strings.HasPrefix(rep.GetName(), PolicyReportName) {
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

// write creates or updates the report name of kind with results; an unchanged one (timestamps
// aside) is not written.
func (r *PolicyReportReconciler) write(ctx context.Context, kind reportKind, namespace, name string, results []wgpolicyv1alpha2.PolicyReportResult) error {
	report := kind.newObj()
	err := r.Reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, report)
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
	if exists && equalResults(kind.results(report), results) {
		return nil
	}
	if !exists {
		report = kind.newObj()
		report.SetName(name)
		report.SetNamespace(namespace)
		report.SetLabels(maps.Clone(managedByLabel))
		kind.set(report, summary, results)
		return r.Client.Create(ctx, report)
	}
	before := report.DeepCopyObject().(client.Object)
	kind.set(report, summary, results)
	_, err = writeObject(ctx, r.Client, before, report)
	return err
}

// crdSettleTime is how long a newly installed CRD may take to be served.
const crdSettleTime = 30 * time.Second

// served reports whether the CRD named crd is installed and not being removed, and when it was
// made (from the cache of CRDs' metadata).
func (r *PolicyReportReconciler) served(ctx context.Context, crd string) (bool, time.Time, error) {
	obj := &metav1.PartialObjectMetadata{}
	obj.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	err := r.Client.Get(ctx, client.ObjectKey{Name: crd}, obj)
	if apierrors.IsNotFound(err) {
		return false, time.Time{}, nil
	}
	if err != nil {
		return false, time.Time{}, err
	}
	return obj.DeletionTimestamp.IsZero(), obj.CreationTimestamp.Time, nil
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
	if r.Formats == nil {
		r.Formats = []ReportFormat{FormatWGPolicy}
	}
	if r.Reader == nil {
		r.Reader = mgr.GetClient()
	}
	if r.Informers == nil {
		r.Informers = mgr.GetCache()
	}
	// A report CRD installed or removed queues every namespace; the metadata of CRDs is all that
	// is cached of them.
	crds := &metav1.PartialObjectMetadata{}
	crds.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	ours := predicate.NewPredicateFuncs(func(obj client.Object) bool {
		for _, f := range r.Formats {
			if obj.GetName() == reportKinds[f].crd {
				return true
			}
		}
		return false
	})
	b := ctrl.NewControllerManagedBy(mgr).Named("policyreport").
		For(&corev1.Namespace{}).
		WatchesMetadata(crds, allNamespaces, builder.WithPredicates(ours)).
		WithOptions(controller.Options{ReconciliationTimeout: r.Timeout}).
		Watches(&securityv1alpha1.ClusterImagePolicy{}, allNamespaces).
		Watches(&securityv1alpha1.VulnerabilityDatabase{}, allNamespaces, builder.WithPredicates(freshnessChanged()))
	for _, obj := range append(workload.Objects(), &securityv1alpha1.ImagePolicy{}, &securityv1alpha1.ImageScanReport{}) {
		b = b.Watches(obj, toNamespace)
	}
	return b.Complete(r)
}
