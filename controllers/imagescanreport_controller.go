package controllers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/workload"
)

// ImageScanner is what the report controller needs of the scanner.
type ImageScanner interface {
	Analysed(digest string) bool
	Inventory(ctx context.Context, ref scanner.ImageRef) (*scanner.Inventory, bool, error)
	Match(ctx context.Context, inv *scanner.Inventory) (*scanner.Result, error)
	Version() string
}

// VulnerabilityDB is what the report controller needs of the DB manager.
type VulnerabilityDB interface {
	Info() (scanner.DBInfo, bool)
	// Subscribe returns a channel that gets an event after each DB swap.
	Subscribe() <-chan event.TypedGenericEvent[scanner.DBInfo]
}

// ImageScanReportReconciler fills a report's status from the scanner: the kept inventory of its
// digest (one analysis cluster-wide) matched against the current DB.
type ImageScanReportReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Scanner   ImageScanner
	DB        VulnerabilityDB
	Recorder  recorder.EventRecorder
	// MaxBytes bounds the encoded size of a report.
	MaxBytes int
	// RescanInterval is when a report is checked again without any event (with 10% jitter).
	RescanInterval time.Duration
	// Concurrency is the number of reports reconciled at once.
	Concurrency int
	// Timeout bounds one reconcile, a scan included; 0 means none.
	Timeout time.Duration
	// ExcludedNamespaces are not scanned, nor namespaces labelled imageguard.dev/exclude=true.
	ExcludedNamespaces []string
	Clock              clock.PassiveClock

	// matched remembers the DB each report was last matched against: a DB update that leaves a
	// report's findings as they were is then neither matched again nor written. It is dropped
	// with the report.
	matched sync.Map // types.NamespacedName -> matchedDB
}

// matchedDB is the DB a report (known by UID: a report deleted and made again is new) was last
// matched against.
type matchedDB struct {
	uid    types.UID
	digest string
}

// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagescanreports,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagescanreports/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile scans the report's image when needed and writes its status once, only if it changed.
func (r *ImageScanReportReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	report := &securityv1alpha1.ImageScanReport{}
	if err := r.Client.Get(ctx, req.NamespacedName, report); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !report.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: report.Namespace}, ns); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if excludedNamespace(ns, r.ExcludedNamespaces) {
		return ctrl.Result{}, nil
	}
	recordVulnerabilities(report)
	before := report.DeepCopy()
	db, ok := r.DB.Info()
	if !ok {
		setDatabaseUnavailable(report)
		return r.finish(ctx, before, report, ctrl.Result{RequeueAfter: 30 * time.Second}, nil)
	}
	if r.current(report, db) {
		return ctrl.Result{RequeueAfter: r.jitter(r.RescanInterval)}, nil
	}
	res, analyzedAt, err := r.scan(ctx, report)
	if err != nil {
		terminal := setScanFailed(report, err)
		// A registry's Retry-After, or the end of a crashed digest's wait, says when to try again.
		if wait, ok := registry.RetryAfter(err); ok && wait > 0 {
			return r.finish(ctx, before, report, ctrl.Result{RequeueAfter: wait}, nil)
		}
		if terminal {
			// Tried again at the rescan interval, or at once when the spec or the DB changes.
			_, werr := r.finish(ctx, before, report, ctrl.Result{}, nil)
			if werr != nil {
				return ctrl.Result{}, werr
			}
			return ctrl.Result{RequeueAfter: r.jitter(r.RescanInterval)}, nil
		}
		return r.finish(ctx, before, report, ctrl.Result{}, err)
	}
	applyScan(report, ScanStatus{
		Result: res, ScannerVersion: r.Scanner.Version(), ScannedAt: metav1.NewTime(r.Clock.Now()),
		AnalyzedAt: analyzedAt, MaxBytes: r.MaxBytes,
	})
	keepScanTimeWhenUnchanged(before, report)
	result, err := r.finish(ctx, before, report, ctrl.Result{RequeueAfter: r.jitter(r.RescanInterval)}, nil)
	if err == nil {
		r.matched.Store(req.NamespacedName, matchedDB{uid: report.UID, digest: res.DB.Digest})
	}
	return result, err
}

// finish writes the report's status when it changed, with its gauges and an Event on a change of
// verdict, and returns result and cause. A failed write is returned instead of cause, so that it
// is retried even when cause is terminal.
func (r *ImageScanReportReconciler) finish(ctx context.Context, before, report *securityv1alpha1.ImageScanReport, result ctrl.Result, cause error) (ctrl.Result, error) {
	written, err := writeStatus(ctx, r.Client, before, report)
	if err != nil {
		if cause != nil {
			err = fmt.Errorf("%w (while recording: %s)", err, cause.Error())
		}
		return ctrl.Result{}, err
	}
	if written {
		recordVulnerabilities(report)
		r.event(before, report)
	}
	return result, cause
}

// forget drops what is kept of a deleted report: its matched DB and its metric series.
func (r *ImageScanReportReconciler) forget(key types.NamespacedName) {
	r.matched.Delete(key)
	metrics.ImageVulnerabilities.DeletePartialMatch(prometheus.Labels{"namespace": key.Namespace, "report": key.Name})
}

// current reports whether report was matched against db and its spec observed.
func (r *ImageScanReportReconciler) current(report *securityv1alpha1.ImageScanReport, db scanner.DBInfo) bool {
	if report.Status.ObservedGeneration != report.Generation ||
		!meta.IsStatusConditionTrue(report.Status.Conditions, securityv1alpha1.ConditionScanned) {
		return false
	}
	key := types.NamespacedName{Namespace: report.Namespace, Name: report.Name}
	if m, ok := r.matched.Load(key); ok && m.(matchedDB).uid == report.UID && m.(matchedDB).digest == db.Digest {
		return true
	}
	return report.Status.VulnerabilityDB != nil && report.Status.VulnerabilityDB.Digest == db.Digest
}

// scan returns the report's findings: its digest's kept inventory (analysed once, cluster-wide,
// with the pull secrets of the pods that run it) matched against the current DB.
func (r *ImageScanReportReconciler) scan(ctx context.Context, report *securityv1alpha1.ImageScanReport) (*scanner.Result, metav1.Time, error) {
	keychain := workload.LazyKeychain(func() (authn.Keychain, error) {
		pods, err := r.podsUsing(ctx, report)
		if err != nil {
			return nil, err
		}
		specs := make([]*corev1.PodSpec, 0, len(pods))
		for _, pod := range pods {
			specs = append(specs, &pod.Spec)
		}
		return workload.Keychain(ctx, r.APIReader, report.Namespace, specs...)
	})
	metrics.ScansInFlight.Inc()
	defer metrics.ScansInFlight.Dec()
	start := time.Now()
	inv, analysed, err := r.Scanner.Inventory(ctx, scanner.ImageRef{Repository: report.Spec.Image, Digest: report.Spec.Digest, Keychain: keychain})
	if analysed || err != nil {
		metrics.Observe(metrics.KindAnalysis, resultLabel(err), start)
	}
	if err != nil {
		return nil, metav1.Time{}, err
	}
	start = time.Now()
	res, err := r.Scanner.Match(ctx, inv)
	metrics.Observe(metrics.KindMatch, resultLabel(err), start)
	if err != nil {
		return nil, metav1.Time{}, err
	}
	return res, metav1.NewTime(inv.AnalyzedAt), nil
}

// resultLabel is the result label of a scan metric: success or the error's kind.
func resultLabel(err error) string {
	if err == nil {
		return "success"
	}
	return string(registry.KindOf(err))
}

// recordVulnerabilities sets the per-report gauges from the report's summary.
func recordVulnerabilities(report *securityv1alpha1.ImageScanReport) {
	s := report.Status.Summary
	if s == nil {
		return
	}
	for _, severity := range securityv1alpha1.Severities {
		metrics.ImageVulnerabilities.WithLabelValues(report.Namespace, report.Name, strings.ToLower(string(severity))).Set(float64(s.Count(severity)))
	}
}

// podsUsing returns the pods of the report's namespace that run its digest or image.
func (r *ImageScanReportReconciler) podsUsing(ctx context.Context, report *securityv1alpha1.ImageScanReport) ([]*corev1.Pod, error) {
	list := &corev1.PodList{}
	if err := r.Client.List(ctx, list, client.InNamespace(report.Namespace)); err != nil {
		return nil, err
	}
	var pods []*corev1.Pod
	for i := range list.Items {
		for _, c := range podContainers(&list.Items[i]) {
			img, err := policy.ParseImage(c.Image)
			if err == nil && (digestOf(c.ImageID) == report.Spec.Digest || img.Digest == report.Spec.Digest || img.Repository == report.Spec.Image) {
				pods = append(pods, &list.Items[i])
				break
			}
		}
	}
	return pods, nil
}

// event tells of a change of the report's verdict (its Ready reason or its counts), with the
// condition's reason.
func (r *ImageScanReportReconciler) event(before, report *securityv1alpha1.ImageScanReport) {
	if r.Recorder == nil {
		return
	}
	oldReady := meta.FindStatusCondition(before.Status.Conditions, securityv1alpha1.ConditionReady)
	newReady := meta.FindStatusCondition(report.Status.Conditions, securityv1alpha1.ConditionReady)
	if newReady == nil {
		return
	}
	summaryChanged := !equality.Semantic.DeepEqual(before.Status.Summary, report.Status.Summary)
	if oldReady != nil && oldReady.Reason == newReady.Reason && oldReady.Status == newReady.Status && !summaryChanged {
		return
	}
	eventType := corev1.EventTypeNormal
	if newReady.Status != metav1.ConditionTrue {
		eventType = corev1.EventTypeWarning
	}
	r.Recorder.Eventf(report, nil, eventType, newReady.Reason, "Scan", "%s", newReady.Message)
}

func (r *ImageScanReportReconciler) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + time.Duration(rand.Int64N(int64(d/10)+1))
}

// SetupWithManager watches reports, and queues every report when the DB is swapped.
func (r *ImageScanReportReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.RescanInterval == 0 {
		r.RescanInterval = 24 * time.Hour
	}
	if r.Concurrency <= 0 {
		r.Concurrency = 2
	}
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	// Every report in the cache is queued once per DB swap; the workqueue's rate limiter and the
	// concurrency pace the re-matches.
	allReports := handler.TypedFuncs[scanner.DBInfo, reconcile.Request]{
		GenericFunc: func(ctx context.Context, _ event.TypedGenericEvent[scanner.DBInfo], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			reports := &securityv1alpha1.ImageScanReportList{}
			if err := r.Client.List(ctx, reports); err != nil {
				ctrl.LoggerFrom(ctx).Error(err, "Listing reports to re-match after a DB update")
				return
			}
			for _, rep := range reports.Items {
				q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: rep.Namespace, Name: rep.Name}})
			}
		},
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&securityv1alpha1.ImageScanReport{}).
		WatchesRawSource(source.Channel(r.DB.Subscribe(), allReports)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Concurrency, ReconciliationTimeout: r.Timeout}).
		Complete(r)
}
