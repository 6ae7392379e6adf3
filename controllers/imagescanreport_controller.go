package controllers

import (
	"context"
	"errors"
	"math/rand/v2"
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
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
)

// ImageScanner is what the report controller needs of the scanner.
type ImageScanner interface {
	Inventory(ctx context.Context, ref scanner.ImageRef) (*scanner.Inventory, bool, error)
	Match(ctx context.Context, inv *scanner.Inventory) (*scanner.Result, error)
	Version() string
}

// VulnerabilityDB is what the report controller needs of the DB manager.
type VulnerabilityDB interface {
	Info() (scanner.DBInfo, bool)
	Subscribe() <-chan scanner.DBInfo
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
	// ExcludedNamespaces are not scanned, nor namespaces labelled imageguard.dev/exclude=true.
	ExcludedNamespaces []string
	Now                func() time.Time

	// matched remembers the DB each report was last matched against: a DB update that leaves a
	// report's findings as they were is then neither matched again nor written.
	matched sync.Map // types.UID -> DB digest
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
			metrics.ImageVulnerabilities.DeletePartialMatch(prometheus.Labels{"namespace": req.Namespace, "report": req.Name})
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
	db, ok := r.DB.Info()
	if !ok {
		return r.writeStatus(ctx, report, func(st *securityv1alpha1.ImageScanReport) {
			setNotReady(st, securityv1alpha1.ReasonDatabaseUnavailable, "no vulnerability DB is loaded yet")
		}, ctrl.Result{RequeueAfter: 30 * time.Second}, nil)
	}
	if r.current(report, db) {
		return ctrl.Result{RequeueAfter: r.jitter(r.RescanInterval)}, nil
	}
	res, analyzedAt, err := r.scan(ctx, report)
	if err != nil {
		return r.scanFailed(ctx, report, err)
	}
	return r.writeStatus(ctx, report, func(st *securityv1alpha1.ImageScanReport) {
		applyScan(st, ScanStatus{
			Result: res, ScannerVersion: r.Scanner.Version(), ScannedAt: metav1.NewTime(r.now()),
			AnalyzedAt: analyzedAt, MaxBytes: r.MaxBytes,
		})
	}, ctrl.Result{RequeueAfter: r.jitter(r.RescanInterval)}, func() { r.matched.Store(report.UID, res.DB.Digest) })
}

// current reports whether report was matched against db and its spec observed.
func (r *ImageScanReportReconciler) current(report *securityv1alpha1.ImageScanReport, db scanner.DBInfo) bool {
	if report.Status.ObservedGeneration != report.Generation ||
		!meta.IsStatusConditionTrue(report.Status.Conditions, securityv1alpha1.ConditionScanned) {
		return false
	}
	if d, ok := r.matched.Load(report.UID); ok && d.(string) == db.Digest {
		return true
	}
	return report.Status.VulnerabilityDB != nil && report.Status.VulnerabilityDB.Digest == db.Digest
}

// scan returns the report's findings: its digest's kept inventory (analysed once, cluster-wide,
// with the pull secrets of the pods that run it) matched against the current DB.
func (r *ImageScanReportReconciler) scan(ctx context.Context, report *securityv1alpha1.ImageScanReport) (*scanner.Result, metav1.Time, error) {
	keychain := &lazyKeychain{load: func() (authn.Keychain, error) {
		pods, err := r.podsUsing(ctx, report)
		if err != nil {
			return nil, err
		}
		return keychainFor(ctx, r.APIReader, pods)
	}}
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
	for severity, n := range map[string]int32{"critical": s.Critical, "high": s.High, "medium": s.Medium, "low": s.Low, "unknown": s.Unknown} {
		metrics.ImageVulnerabilities.WithLabelValues(report.Namespace, report.Name, severity).Set(float64(n))
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
		for _, c := range podImages(&list.Items[i]) {
			img, err := parseImage(c.Image)
			if err == nil && (digestOf(c.ImageID) == report.Spec.Digest || img.Digest == report.Spec.Digest || img.Repository == report.Spec.Image) {
				pods = append(pods, &list.Items[i])
				break
			}
		}
	}
	return pods, nil
}

// scanFailed records a failed scan: Scanned=False with the cause as reason, earlier findings kept.
// An image that can never be scanned is a terminal error; anything else is retried with backoff.
func (r *ImageScanReportReconciler) scanFailed(ctx context.Context, report *securityv1alpha1.ImageScanReport, err error) (ctrl.Result, error) {
	kind := registry.KindOf(err)
	reason := string(kind)
	if kind == registry.KindUnavailable {
		reason = securityv1alpha1.ReasonScanFailed
	}
	retErr := err
	if kind == registry.KindUnsupported {
		retErr = reconcile.TerminalError(err)
	}
	return r.writeStatus(ctx, report, func(st *securityv1alpha1.ImageScanReport) {
		meta.SetStatusCondition(&st.Status.Conditions, metav1.Condition{
			Type: securityv1alpha1.ConditionScanned, Status: metav1.ConditionFalse, Reason: reason,
			Message: err.Error(), ObservedGeneration: st.Generation,
		})
		setNotReady(st, reason, err.Error())
		if kind == registry.KindUnsupported {
			meta.SetStatusCondition(&st.Status.Conditions, metav1.Condition{
				Type: securityv1alpha1.ConditionStalled, Status: metav1.ConditionTrue, Reason: reason,
				Message: err.Error(), ObservedGeneration: st.Generation,
			})
		}
	}, ctrl.Result{}, nil, retErr)
}

func setNotReady(report *securityv1alpha1.ImageScanReport, reason, message string) {
	meta.SetStatusCondition(&report.Status.Conditions, metav1.Condition{
		Type: securityv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason,
		Message: message, ObservedGeneration: report.Generation,
	})
}

// writeStatus applies mutate to a copy of report and patches the status when it changed in more
// than the scan time, then runs onWritten. It emits an Event when the Ready reason or the summary
// changed.
func (r *ImageScanReportReconciler) writeStatus(ctx context.Context, report *securityv1alpha1.ImageScanReport,
	mutate func(*securityv1alpha1.ImageScanReport), result ctrl.Result, onWritten func(), errs ...error) (ctrl.Result, error) {
	want := report.DeepCopy()
	mutate(want)
	if !statusChanged(&report.Status, &want.Status) {
		if onWritten != nil {
			onWritten()
		}
		return result, errors.Join(errs...)
	}
	if err := r.Client.Status().Patch(ctx, want, client.MergeFrom(report)); err != nil {
		return ctrl.Result{}, errors.Join(append(errs, err)...)
	}
	if onWritten != nil {
		onWritten()
	}
	recordVulnerabilities(want)
	r.event(report, want)
	return result, errors.Join(errs...)
}

// statusChanged compares two statuses ignoring the scan time and condition transition times, so
// a re-match that finds the same is not written.
func statusChanged(old, new *securityv1alpha1.ImageScanReportStatus) bool {
	a, b := old.DeepCopy(), new.DeepCopy()
	a.LastScanTime, b.LastScanTime = nil, nil
	for _, st := range []*securityv1alpha1.ImageScanReportStatus{a, b} {
		for i := range st.Conditions {
			st.Conditions[i].LastTransitionTime = metav1.Time{}
		}
		// The DB that produced unchanged findings need not be recorded: see matched.
		st.VulnerabilityDB = nil
	}
	if old.VulnerabilityDB == nil {
		return true
	}
	// Semantic: a time read back from the API server is in another location than ours.
	return !equality.Semantic.DeepEqual(a, b)
}

func (r *ImageScanReportReconciler) event(old, new *securityv1alpha1.ImageScanReport) {
	if r.Recorder == nil {
		return
	}
	oldReady := meta.FindStatusCondition(old.Status.Conditions, securityv1alpha1.ConditionReady)
	newReady := meta.FindStatusCondition(new.Status.Conditions, securityv1alpha1.ConditionReady)
	if newReady == nil {
		return
	}
	summaryChanged := !equality.Semantic.DeepEqual(old.Status.Summary, new.Status.Summary)
	if oldReady != nil && oldReady.Reason == newReady.Reason && oldReady.Status == newReady.Status && !summaryChanged {
		return
	}
	eventType := corev1.EventTypeNormal
	if newReady.Status != metav1.ConditionTrue {
		eventType = corev1.EventTypeWarning
	}
	r.Recorder.Eventf(new, nil, eventType, newReady.Reason, "Scan", "%s", newReady.Message)
}

func (r *ImageScanReportReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *ImageScanReportReconciler) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + time.Duration(rand.Int64N(int64(d/10)+1))
}

// SetupWithManager watches reports, and re-queues every report when the DB is swapped.
func (r *ImageScanReportReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.RescanInterval == 0 {
		r.RescanInterval = 24 * time.Hour
	}
	if r.Concurrency <= 0 {
		r.Concurrency = 2
	}
	updates := r.DB.Subscribe()
	// Every report is queued once per DB swap; the workqueue's rate limiter and the concurrency
	// pace the re-matches. The source stops with the manager.
	dbSwaps := source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-updates:
					reports := &securityv1alpha1.ImageScanReportList{}
					if err := r.Client.List(ctx, reports); err != nil {
						ctrl.LoggerFrom(ctx).Error(err, "Listing reports to re-match after a DB update")
						continue
					}
					for _, rep := range reports.Items {
						q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: rep.Namespace, Name: rep.Name}})
					}
				}
			}
		}()
		return nil
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&securityv1alpha1.ImageScanReport{}).
		WatchesRawSource(dbSwaps).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Concurrency}).
		Complete(r)
}
