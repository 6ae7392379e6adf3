package controllers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
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
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/vulndb"
	"github.com/imageguard/imageguard/internal/workload"
)

// ImageScanner is what the report controller needs of the scanner.
type ImageScanner interface {
	Analysed(digest, platform string) bool
	// Reanalyse starts a new analysis of a kept inventory older than ref.AnalyzedAfter in the
	// background, and reports whether it did (see scanner.Scanner.Reanalyse).
	Reanalyse(ref scanner.ImageRef, done func(error)) bool
	Inventory(ctx context.Context, ref scanner.ImageRef) (*scanner.Inventory, bool, error)
	Match(ctx context.Context, inv *scanner.Inventory) (*scanner.Result, error)
	// IndexPlatforms returns the platforms an index digest has images for (nil for an image
	// manifest); kept, or read from the registry for an index seen before they were kept.
	IndexPlatforms(ctx context.Context, ref scanner.ImageRef) ([]string, error)
	Version() string
}

// VulnerabilityDB is what the report controller needs of the DB manager.
type VulnerabilityDB interface {
	Info() (scanner.DBInfo, bool)
	// Subscribe returns a channel that gets an event after each DB swap.
	Subscribe() <-chan event.TypedGenericEvent[scanner.DBInfo]
	// State is what the DB manager knows of the DB in use and of its last check; Checked returns
	// a channel that gets it after each check.
	State() vulndb.State
	Checked() <-chan event.TypedGenericEvent[vulndb.State]
}

// JavaDB is what the controllers need of the Java DB manager: what they need of the
// vulnerability DB's (its swaps queue the reports that waited for it; its state is the
// trivy-java-db VulnerabilityDatabase), and a way to ask for it.
type JavaDB interface {
	VulnerabilityDB
	// Want asks for the Java DB when none is loaded (the manager paces its tries).
	Want()
}

// ImageScanReportReconciler fills a report's status from the scanner: the kept inventory of its
// digest (one analysis cluster-wide) matched against the current DB.
type ImageScanReportReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Scanner   ImageScanner
	DB        VulnerabilityDB
	// JavaDB, when set, queues the reports of images whose Java archives waited for it when it
	// is loaded or swapped.
	JavaDB   JavaDB
	Recorder recorder.EventRecorder
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
	// RefreshInterval is how often at most a report whose findings a new DB left as they were is
	// written to bring its status.vulnerabilityDB and lastScanTime up to date; 0 means
	// DefaultReportRefreshInterval.
	RefreshInterval time.Duration
	// Matches remembers each report's last match: a DB update that leaves a report's findings as
	// they were is then neither matched again nor written. Setup shares it with the policies'
	// freshness and the DB's status; nil makes one.
	Matches *Matches
	// MaxAnalysisAge returns the smallest maxAnalysisAge of the policies of a namespace (0: none);
	// a report's image is analysed again, in the background, once its inventory is half that old.
	// Nil: never.
	MaxAnalysisAge func(ctx context.Context, namespace string) (time.Duration, error)

	// reanalysed queues the reports of a digest analysed again; newInventory marks them, so that
	// they are matched again although their status names the DB in use.
	reanalysed   chan event.GenericEvent
	newInventory sync.Map // types.NamespacedName -> struct{}
	// started is when this process began reconciling reports (newerThan).
	started time.Time
}

// newerDBWait is how long after its start the controller leaves alone a report another replica
// matched against a newer DB than its own (the first check brings it the same one); after that,
// the DB in use is the operator's choice, even an older one.
const newerDBWait = 15 * time.Minute

// DefaultReportRefreshInterval is how often at most an unchanged report's DB and scan time are
// written.
const DefaultReportRefreshInterval = 24 * time.Hour

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
		r.Matches.Skip(req.NamespacedName)
		return ctrl.Result{}, nil
	}
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: report.Namespace}, ns); err != nil {
		if apierrors.IsNotFound(err) {
			r.Matches.Skip(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if excludedNamespace(ns, r.ExcludedNamespaces) {
		r.Matches.Skip(req.NamespacedName)
		return ctrl.Result{}, nil
	}
	recordVulnerabilities(report)
	before := report.DeepCopy()
	db, ok := r.DB.Info()
	if !ok {
		setDatabaseUnavailable(report)
		return r.finish(ctx, before, report, ctrl.Result{RequeueAfter: 30 * time.Second}, nil)
	}
	now := r.Clock.Now()
	analysisLimit, err := r.analysisLimit(ctx, report.Namespace)
	if err != nil {
		return ctrl.Result{}, err
	}
	if after := reanalysisDue(report, analysisLimit, now); !after.IsZero() {
		r.reanalyse(report, after)
	}
	_, newInventory := r.newInventory.LoadAndDelete(req.NamespacedName)
	if !newInventory && r.current(report, db, now) {
		r.Matches.Matched(req.NamespacedName, report.UID, db, nil)
		return ctrl.Result{RequeueAfter: r.nextVisit(report, db, analysisLimit, now)}, nil
	}
	if time.Since(r.started) < newerDBWait && newerThan(report, db) {
		// Matched by another replica against a newer DB than this one has (a leader that changed
		// before its first check): matching it backwards would report findings fixed, then new
		// again. It waits for this replica's DB, and the re-match is not done meanwhile.
		return ctrl.Result{RequeueAfter: time.Minute}, nil
	}
	res, analyzedAt, err := r.scan(ctx, report)
	if err != nil {
		terminal := setScanFailed(report, err)
		if werr := r.record(ctx, before, report); werr != nil {
			return ctrl.Result{}, fmt.Errorf("%w (while recording: %s)", werr, err.Error())
		}
		// Counted only once written: freshness infers from the DB object that a report whose
		// Scanned condition is True was matched against the DB in use.
		r.Matches.Failed(req.NamespacedName)
		// A registry's Retry-After, or the end of a crashed digest's wait, says when to try again.
		if wait, ok := registry.RetryAfter(err); ok && wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		if terminal {
			// Tried again at the rescan interval, or at once when the spec or the DB changes.
			return ctrl.Result{RequeueAfter: r.jitter(r.RescanInterval)}, nil
		}
		return ctrl.Result{}, err
	}
	keys := findingKeys(res.Findings)
	changes, added := r.changes(req.NamespacedName, before, res, keys, now)
	applyScan(report, ScanStatus{
		Result: res, ScannerVersion: r.Scanner.Version(), ScannedAt: metav1.NewTime(now),
		AnalyzedAt: analyzedAt, MaxBytes: r.MaxBytes,
	})
	if changes != nil {
		report.Status.Changes = changes
	}
	keepScanTimeWhenUnchanged(before, report, r.refreshDue(before, now))
	result, err := r.finish(ctx, before, report, ctrl.Result{RequeueAfter: r.nextVisit(report, res.DB, analysisLimit, now)}, nil)
	if err != nil {
		return result, err
	}

	r.Matches.Matched(req.NamespacedName, report.UID, res.DB, keys)
	if changes != nil && changes.New > 0 {
		r.newVulnerabilities(ctx, report, changes, added)
	}
	return result, nil
}

// changes returns what the scan res changed in the report's findings, against those of its last
// match (in memory, else its status), and the new findings by severity; nil for a first scan or
// when nothing appeared or went.
func (r *ImageScanReportReconciler) changes(key types.NamespacedName, before *securityv1alpha1.ImageScanReport, res *scanner.Result, keys []uint64, now time.Time) (*securityv1alpha1.FindingChanges, map[securityv1alpha1.Severity]int) {
	if before.Status.Summary == nil {
		return nil, nil
	}
	_, known, _ := r.Matches.Lookup(key, before.UID)
	if known != nil && slices.Equal(known, keys) {
		return nil, nil
	}
	return changesOf(known, before.Status.Vulnerabilities, before.Status.VulnerabilitiesOmitted > 0, res.Findings, res.DB.Digest, now)
}

// newVulnerabilities tells of the findings a match added: the counter by severity, and an Event
// on the report and on each of its workloads.
func (r *ImageScanReportReconciler) newVulnerabilities(ctx context.Context, report *securityv1alpha1.ImageScanReport, changes *securityv1alpha1.FindingChanges, added map[securityv1alpha1.Severity]int) {
	for severity, n := range added {
		metrics.NewVulnerabilities.WithLabelValues(strings.ToLower(string(severity))).Add(float64(n))
	}
	if r.Recorder == nil {
		return
	}
	ids := strings.Join(changes.NewIDs, ", ")
	if int(changes.New) > len(changes.NewIDs) {
		ids += ", ..."
	}
	msg := fmt.Sprintf("%d new vulnerabilities in %s@%s (DB %s): %s", changes.New, report.Spec.Image, report.Spec.Digest, changes.VulnerabilityDB, ids)
	r.Recorder.Eventf(report, nil, corev1.EventTypeWarning, securityv1alpha1.ReasonNewVulnerabilities, "Rematch", "%s", msg)
	for _, w := range report.Status.Workloads {
		if obj := r.workloadObject(ctx, report.Namespace, w); obj != nil {
			r.Recorder.Eventf(obj, report, corev1.EventTypeWarning, securityv1alpha1.ReasonNewVulnerabilities, "Rematch", "%s", msg)
		}
	}
}

// workloadObject reads the workload w of namespace from the cache, for an Event; nil when it is
// of a kind outside the table or cannot be read.
func (r *ImageScanReportReconciler) workloadObject(ctx context.Context, namespace string, w securityv1alpha1.Workload) client.Object {
	for _, k := range workload.Kinds {
		if k.GVK.Kind != w.Kind {
			continue
		}
		obj := k.New()
		if err := r.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: w.Name}, obj); err != nil {
			return nil
		}
		return obj
	}
	return nil
}

// finish writes the report's status when it changed, with its gauges and an Event on a change of
// verdict, and returns result and cause. A failed write is returned instead of cause, so that it
// is retried even when cause is terminal.
func (r *ImageScanReportReconciler) finish(ctx context.Context, before, report *securityv1alpha1.ImageScanReport, result ctrl.Result, cause error) (ctrl.Result, error) {
	if err := r.record(ctx, before, report); err != nil {
		if cause != nil {
			err = fmt.Errorf("%w (while recording: %s)", err, cause.Error())
		}
		return ctrl.Result{}, err
	}
	return result, cause
}

// record writes the report's status when it changed, with its gauges and an Event on a change
// of verdict.
func (r *ImageScanReportReconciler) record(ctx context.Context, before, report *securityv1alpha1.ImageScanReport) error {
	written, err := writeStatus(ctx, r.Client, before, report)
	if err != nil {
		return err
	}
	if written {
		recordVulnerabilities(report)
		r.event(before, report)
	}
	return nil
}

// newerThan reports whether report was matched against a DB built after db.
func newerThan(report *securityv1alpha1.ImageScanReport, db scanner.DBInfo) bool {
	st := report.Status.VulnerabilityDB
	return st != nil && st.UpdatedAt != nil && st.Digest != db.Digest && st.UpdatedAt.After(db.UpdatedAt) &&
		report.Status.ObservedGeneration == report.Generation &&
		meta.IsStatusConditionTrue(report.Status.Conditions, securityv1alpha1.ConditionScanned)
}

// forget drops what is kept of a deleted report: its matched DB and its metric series.
func (r *ImageScanReportReconciler) forget(key types.NamespacedName) {
	r.Matches.Forget(key)
	metrics.ImageVulnerabilities.DeletePartialMatch(prometheus.Labels{"namespace": key.Namespace, "report": key.Name})
}

// current reports whether report was matched against db and its spec observed, and its status
// needs no refresh.
func (r *ImageScanReportReconciler) current(report *securityv1alpha1.ImageScanReport, db scanner.DBInfo, now time.Time) bool {
	if report.Status.ObservedGeneration != report.Generation ||
		!meta.IsStatusConditionTrue(report.Status.Conditions, securityv1alpha1.ConditionScanned) {
		return false
	}
	if r.JavaDB != nil && report.Status.JavaArchivesNotAnalysed > 0 {
		if _, loaded := r.JavaDB.Info(); loaded {
			return false // its jars are analysed now
		}
		r.JavaDB.Want()
	}
	if st := report.Status.VulnerabilityDB; st != nil && st.Digest == db.Digest {
		return true
	}
	matched, _, ok := r.Matches.Lookup(types.NamespacedName{Namespace: report.Namespace, Name: report.Name}, report.UID)
	return ok && matched.Digest == db.Digest && !r.refreshDue(report, now)
}

// refreshDue reports whether report's status.vulnerabilityDB and lastScanTime are due to be
// brought up to date although its findings did not change.
func (r *ImageScanReportReconciler) refreshDue(report *securityv1alpha1.ImageScanReport, now time.Time) bool {
	t := report.Status.LastScanTime
	return t == nil || !now.Before(t.Add(r.RefreshInterval))
}

// analysisLimit is the smallest maxAnalysisAge of the policies of namespace; 0 when none says.
func (r *ImageScanReportReconciler) analysisLimit(ctx context.Context, namespace string) (time.Duration, error) {
	if r.MaxAnalysisAge == nil {
		return 0, nil
	}
	return r.MaxAnalysisAge(ctx, namespace)
}

// reanalysisDue returns, when report's inventory is at least half of limit old, the time after
// which a new analysis must have been made; zero when none is due.
func reanalysisDue(report *securityv1alpha1.ImageScanReport, limit time.Duration, now time.Time) time.Time {
	t := report.Status.LastAnalysisTime
	if limit <= 0 || t == nil || now.Before(t.Add(limit/2)) {
		return time.Time{}
	}
	return now.Add(-limit / 2)
}

// reanalyse starts the background re-analysis of report's image when the scanner takes it (none
// running, none failed lately); its end queues every report of the digest, and a failure is told
// in an Event on report. The kept inventory serves meanwhile.
func (r *ImageScanReportReconciler) reanalyse(report *securityv1alpha1.ImageScanReport, after time.Time) {
	regarding := report.DeepCopy()
	// Its own context: the analysis outlives this reconcile.
	keychain := workload.LazyKeychain(func() (authn.Keychain, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return r.keychain(ctx, regarding)
	})
	ref := scanner.ImageRef{Repository: report.Spec.Image, Digest: report.Spec.Digest, Platform: report.Spec.Platform, Keychain: keychain, AnalyzedAfter: after}
	r.Scanner.Reanalyse(ref, func(err error) {
		if err != nil {
			if r.Recorder != nil {
				r.Recorder.Eventf(regarding, nil, corev1.EventTypeWarning, securityv1alpha1.ReasonReanalysisFailed, "Analyse",
					"analysing the image again (its inventory is older than half the namespace's maxAnalysisAge) failed; the kept inventory serves meanwhile: %s", err.Error())
			}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// The reports of the digest, in every namespace (the index Setup registers).
		reports := &securityv1alpha1.ImageScanReportList{}
		if err := r.Client.List(ctx, reports, client.MatchingFields{workload.IndexReportDigest: regarding.Spec.Digest}); err != nil {
			return
		}
		for i := range reports.Items {
			rep := &reports.Items[i]
			r.newInventory.Store(types.NamespacedName{Namespace: rep.Namespace, Name: rep.Name}, struct{}{})
			select {
			case r.reanalysed <- event.GenericEvent{Object: rep}:
			default: // full: the report is matched again at its next visit
			}
		}
	})
}

// nextVisit is when report is reconciled again without an event: at the rescan interval, or
// sooner when its status lags the DB db and is due for a refresh, or its image for a new analysis
// (analysisLimit), before that.
func (r *ImageScanReportReconciler) nextVisit(report *securityv1alpha1.ImageScanReport, db scanner.DBInfo, analysisLimit time.Duration, now time.Time) time.Duration {
	next := r.jitter(r.RescanInterval)
	if t := report.Status.LastAnalysisTime; analysisLimit > 0 && t != nil {
		due := t.Add(analysisLimit/2).Sub(now) + time.Second
		if due <= 0 {
			// Due already: a re-analysis was started, or waits after a failure.
			due = scanner.ReanalysisRetry
		}
		next = min(next, due)
	}
	if st, t := report.Status.VulnerabilityDB, report.Status.LastScanTime; st != nil && t != nil && st.Digest != db.Digest {
		if due := t.Add(r.RefreshInterval).Sub(now) + time.Second; due < next {
			next = r.jitter(max(due, time.Second))
		}
	}
	return next
}

// maxCoveringScans bounds the registry scans whose credentials a report's analysis uses.
const maxCoveringScans = 4

// keychain returns the pull credentials of the pods of report's namespace that run its image, and
// of the registry scans that list it.
func (r *ImageScanReportReconciler) keychain(ctx context.Context, report *securityv1alpha1.ImageScanReport) (authn.Keychain, error) {
	pods, err := r.podsUsing(ctx, report)
	if err != nil {
		return nil, err
	}
	specs := make([]*corev1.PodSpec, 0, len(pods)+len(report.Status.Sources))
	for _, pod := range pods {
		specs = append(specs, &pod.Spec)
	}
	// The scans of the namespace that list the image's repository (a report a scan just made
	// does not name it as a source yet).
	scans := &securityv1alpha1.RegistryScanList{}
	if err := r.Client.List(ctx, scans, client.InNamespace(report.Namespace)); err != nil {
		return nil, err
	}
	// A few (each is a service account and Secret reads), always the same: those that list the
	// report first, then by name.
	named := map[string]bool{}
	for _, s := range report.Status.Sources {
		named[s.RegistryScan] = true
	}
	covering := slices.DeleteFunc(scans.Items, func(s securityv1alpha1.RegistryScan) bool { return !scanCovers(&s, report.Spec.Image) })
	slices.SortFunc(covering, func(a, b securityv1alpha1.RegistryScan) int {
		if named[a.Name] != named[b.Name] {
			if named[a.Name] {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	for i := range covering[:min(len(covering), maxCoveringScans)] {
		specs = append(specs, scanPodSpec(&covering[i]))
	}
	return workload.Keychain(ctx, r.APIReader, report.Namespace, specs...)
}

// scan returns the report's findings: its digest's kept inventory (analysed once, cluster-wide,
// with the pull secrets of the pods that run it) matched against the current DB.
func (r *ImageScanReportReconciler) scan(ctx context.Context, report *securityv1alpha1.ImageScanReport) (*scanner.Result, metav1.Time, error) {
	keychain := workload.LazyKeychain(func() (authn.Keychain, error) { return r.keychain(ctx, report) })
	metrics.ScansInFlight.Inc()
	defer metrics.ScansInFlight.Dec()
	start := time.Now()
	ref := scanner.ImageRef{Repository: report.Spec.Image, Digest: report.Spec.Digest, Platform: report.Spec.Platform, Keychain: keychain}
	inv, analysed, err := r.Scanner.Inventory(ctx, ref)
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
	if inv.Digest != report.Spec.Digest {
		// An index: admission asks for a report on each of its platforms the nodes have. Not
		// read now (a registry that fails), those written before stay until the next scan.
		if res.IndexPlatforms, err = r.Scanner.IndexPlatforms(ctx, ref); err != nil {
			ctrl.LoggerFrom(ctx).V(1).Info("Cannot tell the platforms of the image index", "digest", report.Spec.Digest, "error", err.Error())
			res.IndexPlatforms = report.Status.IndexPlatforms
		}
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
	if r.RefreshInterval <= 0 {
		r.RefreshInterval = DefaultReportRefreshInterval
	}
	if r.Matches == nil {
		r.Matches = NewMatches()
	}
	r.reanalysed = make(chan event.GenericEvent, 1024)
	r.started = time.Now()
	// Every report in the cache is queued once per DB swap; the workqueue's rate limiter and the
	// concurrency pace the re-matches.
	allReports := handler.TypedFuncs[scanner.DBInfo, reconcile.Request]{
		GenericFunc: func(ctx context.Context, e event.TypedGenericEvent[scanner.DBInfo], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			reqs, err := reportRequests(ctx, r.Client)
			if err != nil {
				ctrl.LoggerFrom(ctx).Error(err, "Listing reports to re-match after a DB update")
				return
			}
			keys := make([]types.NamespacedName, 0, len(reqs))
			for _, req := range reqs {
				keys = append(keys, req.NamespacedName)
			}
			r.Matches.Begin(e.Object.Digest, keys)
			for _, req := range reqs {
				q.Add(req)
			}
		},
	}
	// A policy whose maxAnalysisAge appears or changes queues the reports it may apply to, so that
	// the re-analyses it asks for start now, not at their next visit.
	analysisAgeChanged := predicate.Funcs{
		CreateFunc: func(e event.CreateEvent) bool { return maxAnalysisAgeOf(e.Object) != nil },
		DeleteFunc: func(event.DeleteEvent) bool { return false },
		UpdateFunc: func(e event.UpdateEvent) bool {
			return !equality.Semantic.DeepEqual(maxAnalysisAgeOf(e.ObjectOld), maxAnalysisAgeOf(e.ObjectNew))
		},
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
	// A ClusterImagePolicy's namespace is "": every report.
	reportsOf := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
		reqs, _ := reportRequests(ctx, r.Client, client.InNamespace(obj.GetNamespace()))
		return reqs
	})
	b := ctrl.NewControllerManagedBy(mgr)
	if r.JavaDB != nil {
		b = b.WatchesRawSource(source.Channel(r.JavaDB.Subscribe(), handler.TypedEnqueueRequestsFromMapFunc(
			func(ctx context.Context, _ scanner.DBInfo) []reconcile.Request {
				return waitingForJavaDB(ctx, r.Client)
			})))
	}
	return b.
		For(&securityv1alpha1.ImageScanReport{}).
		WatchesRawSource(source.Channel(r.DB.Subscribe(), allReports)).
		WatchesRawSource(source.Channel(r.reanalysed, &handler.EnqueueRequestForObject{})).
		Watches(&securityv1alpha1.ImagePolicy{}, reportsOf, builder.WithPredicates(analysisAgeChanged)).
		Watches(&securityv1alpha1.ClusterImagePolicy{}, reportsOf, builder.WithPredicates(analysisAgeChanged)).
		// A namespace excluded or included again: its reports are skipped, or scanned again.
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
			reqs, _ := reportRequests(ctx, r.Client, client.InNamespace(obj.GetName()))
			return reqs
		}), builder.WithPredicates(predicate.Funcs{
			CreateFunc:  func(event.CreateEvent) bool { return false },
			DeleteFunc:  func(event.DeleteEvent) bool { return false },
			GenericFunc: func(event.GenericEvent) bool { return false },
			UpdateFunc: func(e event.UpdateEvent) bool {
				return e.ObjectOld.GetLabels()[ExcludeLabel] != e.ObjectNew.GetLabels()[ExcludeLabel]
			},
		})).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Concurrency, ReconciliationTimeout: r.Timeout}).
		Complete(r)
}

// waitingForJavaDB returns a request for each report whose findings lack its image's Java
// archives (status.javaArchivesNotAnalysed, which a failed re-scan leaves in place).
func waitingForJavaDB(ctx context.Context, c client.Reader) []reconcile.Request {
	reports := &securityv1alpha1.ImageScanReportList{}
	if err := c.List(ctx, reports); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, rep := range reports.Items {
		if rep.Status.JavaArchivesNotAnalysed > 0 {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: rep.Namespace, Name: rep.Name}})
		}
	}
	return reqs
}

// reportRequests returns a request for each report c lists with opts.
func reportRequests(ctx context.Context, c client.Reader, opts ...client.ListOption) ([]reconcile.Request, error) {
	reports := &securityv1alpha1.ImageScanReportList{}
	if err := c.List(ctx, reports, opts...); err != nil {
		return nil, err
	}
	reqs := make([]reconcile.Request, 0, len(reports.Items))
	for _, rep := range reports.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: rep.Namespace, Name: rep.Name}})
	}
	return reqs, nil
}

// maxAnalysisAgeOf returns the maxAnalysisAge of a policy object; nil when it sets none.
func maxAnalysisAgeOf(obj client.Object) *metav1.Duration {
	var rules securityv1alpha1.PolicyRules
	switch p := obj.(type) {
	case *securityv1alpha1.ImagePolicy:
		rules = p.Spec.Rules
	case *securityv1alpha1.ClusterImagePolicy:
		rules = p.Spec.Rules
	default:
		return nil
	}
	if rules.Vulnerabilities == nil {
		return nil
	}
	return rules.Vulnerabilities.MaxAnalysisAge
}
