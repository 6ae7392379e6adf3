package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/registryscan"
	"github.com/imageguard/imageguard/internal/workload"
)

// RegistryScanLabel marks the reports some RegistryScan lists (status.sources names which).
const RegistryScanLabel = "security.imageguard.dev/registry-scan"

// Defaults and bounds of registry scans.
const (
	// DefaultRegistryScanInterval is a scan's listing interval when its spec says none.
	DefaultRegistryScanInterval = 6 * time.Hour
	// DefaultRegistryScanRetry is when a listing that failed in part is tried again.
	DefaultRegistryScanRetry = time.Minute
	// DefaultRegistryScanTimeout bounds one listing (a large registry, paced, takes minutes).
	DefaultRegistryScanTimeout = 10 * time.Minute
	// MaxRegistryScanTags bounds the tags one scan selects, and so the reports it makes.
	MaxRegistryScanTags = 10_000
	// MaxRegistryScanReports bounds the reports the scans of one namespace keep.
	MaxRegistryScanReports = 10_000
	// maxScanFailures and maxWorst bound the lists of a scan's status.
	maxScanFailures = 20
	maxWorst        = 10
	// maxSourceTags bounds the tags of a report's source.
	maxSourceTags = 16
	// maxSources bounds the scans a report names.
	maxSources = 16
)

// Reasons of a RegistryScan's conditions (the failures' reasons are the registry's kinds).
const (
	ReasonListed            = "Listed"
	ReasonInvalidSpec       = "InvalidSpec"
	ReasonSuspended         = "Suspended"
	ReasonNamespaceExcluded = "NamespaceExcluded"
	ReasonScansPending      = "ScansPending"
)

// RegistryScanReconciler lists the repositories of each RegistryScan at its interval (or when
// asked, by the receiver), keeps an ImageScanReport in the scan's namespace for every digest its
// tags select (the report controller scans it, as any other), and sums up their findings in the
// scan's status. A report no scan lists any more loses the scan as a source; the pod controller
// removes it --report-retention after neither a scan nor a pod uses it.
type RegistryScanReconciler struct {
	Client client.Client
	// APIReader reads pull secrets and service accounts by name, uncached, and reports the cache
	// does not show yet.
	APIReader client.Reader
	Lister    *registryscan.Lister
	Clock     clock.PassiveClock
	// RetryInterval is when a listing that failed in part is tried again; 0:
	// DefaultRegistryScanRetry. A registry's Retry-After comes first.
	RetryInterval time.Duration
	// Timeout bounds one reconcile, its listing included; 0: DefaultRegistryScanTimeout.
	Timeout time.Duration
	// ExcludedNamespaces (and namespaces labelled ExcludeLabel) are not scanned.
	ExcludedNamespaces []string

	// listings holds, per scan, what its last listings failed (listingState).
	listings sync.Map // types.NamespacedName -> listingState
}

// listingState is what a scan's last listings failed: what the last one failed to list (the
// status names only the first of them), and how many in a row failed in part.
type listingState struct {
	failed, failedInARow int
}

func (r *RegistryScanReconciler) listingState(scan *securityv1alpha1.RegistryScan) (listingState, bool) {
	v, ok := r.listings.Load(types.NamespacedName{Namespace: scan.Namespace, Name: scan.Name})
	st, _ := v.(listingState)
	return st, ok
}

// reportWritesTimeout bounds the report writes of one listing (10,000 reports are some 30,000
// API requests, paced by the client's rate limit), statusWriteTimeout the status write after.
const (
	reportWritesTimeout = 10 * time.Minute
	statusWriteTimeout  = 30 * time.Second
)

// +kubebuilder:rbac:groups=security.imageguard.dev,resources=registryscans,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=security.imageguard.dev,resources=registryscans/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagescanreports,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagescanreports/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get

// Reconcile lists the scan's repositories when due, and writes its status.
func (r *RegistryScanReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	scan := &securityv1alpha1.RegistryScan{}
	if err := r.Client.Get(ctx, req.NamespacedName, scan); err != nil {
		if apierrors.IsNotFound(err) {
			// Gone: its reports lose it as a source (the pod controller also ignores a source
			// that names no scan, should this never run).
			r.listings.Delete(req.NamespacedName)
			return ctrl.Result{}, r.syncReports(ctx, req.Namespace, req.Name, nil, true)
		}
		return ctrl.Result{}, err
	}
	if !scan.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	before := scan.DeepCopy()
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: scan.Namespace}, ns); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if excludedNamespace(ns, r.ExcludedNamespaces) {
		setStalled(scan, ReasonNamespaceExcluded, "the namespace is excluded from scanning")
		_, err := writeStatus(ctx, r.Client, before, scan)
		return ctrl.Result{RequeueAfter: interval(scan)}, err
	}
	selector, err := compileScan(scan.Spec)
	if err != nil {
		setStalled(scan, ReasonInvalidSpec, err.Error())
		_, err := writeStatus(ctx, r.Client, before, scan)
		return ctrl.Result{}, err
	}
	removeCondition(scan, securityv1alpha1.ConditionStalled)
	now := r.Clock.Now()
	requested := scan.Annotations[securityv1alpha1.RequestedAtAnnotation]
	var retryAfter time.Duration
	if !scan.Spec.Suspend && r.listDue(scan, requested, now) {
		if scan.Status.ObservedGeneration != scan.Generation {
			r.listings.Delete(req.NamespacedName) // a new spec starts without backoff
		}
		// The listing, then the report writes, each have a deadline of their own (the reconcile's
		// is their sum and the status write's), and what the listing found is written even when it
		// ran out: the status says what this listing read, and when.
		lctx, cancel := context.WithTimeout(ctx, r.Timeout)
		l := r.list(lctx, scan, selector)
		cancel()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reportWritesTimeout)
		err := r.syncReports(sctx, scan.Namespace, scan.Name, l.digests, l.complete())
		cancel()
		var done context.CancelFunc
		ctx, done = context.WithTimeout(context.WithoutCancel(ctx), statusWriteTimeout)
		defer done()
		if err != nil {
			// Recorded as the listing's failure and retried as one (with backoff): a report
			// that cannot be written must not make every retry list the registry again at once.
			l.fail(scan.Spec.Repositories[0], "", fmt.Errorf("writing the reports: %w", err))
		}
		t := metav1.NewTime(now)
		st := &scan.Status
		st.LastListTime, st.LastHandledRequest = &t, requested
		st.Repositories, st.Tags, st.Digests = int32(l.repositories), int32(l.tags), int32(len(l.digests))
		st.Failures = l.failures
		retryAfter = l.retryAfter
		state, _ := r.listingState(scan)
		state.failed = l.failed
		if l.failed > 0 {
			state.failedInARow++
		} else {
			state.failedInARow = 0
		}
		r.listings.Store(req.NamespacedName, state)
	}
	pending, err := r.summarize(ctx, scan)
	if err != nil {
		return ctrl.Result{}, err
	}
	r.setConditions(scan, pending)
	if _, err := writeStatus(ctx, r.Client, before, scan); err != nil {
		return ctrl.Result{}, err
	}
	if scan.Spec.Suspend {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{RequeueAfter: r.nextListing(scan, retryAfter, r.Clock.Now())}, nil
}

// compileScan checks what the CRD's schema cannot: the tag filter's expressions and range, and
// that each repository parses.
func compileScan(spec securityv1alpha1.RegistryScanSpec) (*registryscan.Selector, error) {
	for _, entry := range spec.Repositories {
		if _, err := registryscan.ParseEntry(entry); err != nil {
			return nil, fmt.Errorf("repositories: %w", err)
		}
	}
	var f registryscan.TagFilter
	if t := spec.Tags; t != nil {
		f = registryscan.TagFilter{Semver: t.Semver, Pattern: t.Pattern, Latest: int(t.Latest), Exclude: t.Exclude}
	}
	s, err := registryscan.Compile(f)
	if err != nil {
		return nil, fmt.Errorf("tags.%w", err)
	}
	return s, nil
}

func interval(scan *securityv1alpha1.RegistryScan) time.Duration {
	if scan.Spec.Interval != nil && scan.Spec.Interval.Duration >= time.Minute {
		return scan.Spec.Interval.Duration
	}
	return DefaultRegistryScanInterval
}

// listDue reports whether the scan's repositories are to be listed now: never listed, its spec
// changed, a listing asked for, its interval passed, or its last listing failed in part and the
// retry is due.
func (r *RegistryScanReconciler) listDue(scan *securityv1alpha1.RegistryScan, requested string, now time.Time) bool {
	st := scan.Status
	if st.LastListTime == nil || st.ObservedGeneration != scan.Generation || requested != st.LastHandledRequest {
		return true
	}
	return !now.Before(st.LastListTime.Add(r.sinceLastListing(scan)))
}

// sinceLastListing is how long after its last listing a scan is listed again: its interval, or
// after a listing that failed in part the retry interval, doubled with each such listing in a
// row, never past the interval.
func (r *RegistryScanReconciler) sinceLastListing(scan *securityv1alpha1.RegistryScan) time.Duration {
	if !listingFailed(scan) {
		return interval(scan)
	}
	state, _ := r.listingState(scan)
	wait := r.RetryInterval
	for i := 1; i < state.failedInARow && wait < interval(scan); i++ {
		wait *= 2
	}
	return min(wait, interval(scan))
}

// listingFailed reports whether the scan's last listing failed in part (a failure without a
// digest is the listing's; one with a digest is its scan's).
func listingFailed(scan *securityv1alpha1.RegistryScan) bool {
	for _, f := range scan.Status.Failures {
		if f.Digest == "" {
			return true
		}
	}
	return false
}

// nextListing is when the scan is reconciled again without an event.
func (r *RegistryScanReconciler) nextListing(scan *securityv1alpha1.RegistryScan, retryAfter time.Duration, now time.Time) time.Duration {
	if scan.Status.LastListTime == nil {
		return r.RetryInterval
	}
	next := scan.Status.LastListTime.Add(r.sinceLastListing(scan)).Sub(now)
	return max(next, retryAfter, time.Second)
}

// listedDigest is a digest a listing found: its repository (the first in sort order, when one
// digest is in several) and its tags.
type listedDigest struct {
	repository string
	tags       map[string]bool
}

// listing is what one listing of a scan found.
type listing struct {
	repositories int
	tags         int
	digests      map[string]*listedDigest
	failures     []securityv1alpha1.RegistryScanFailure
	failed       int
	retryAfter   time.Duration
}

// complete reports whether everything was listed: only then is a digest not found no longer
// listed (a registry that failed for a moment must not remove reports).
func (l *listing) complete() bool { return l.failed == 0 }

func (l *listing) fail(repository, tag string, err error) {
	l.failed++
	if wait, ok := registry.RetryAfter(err); ok && wait > l.retryAfter {
		l.retryAfter = wait
	}
	if len(l.failures) < maxScanFailures {
		l.failures = append(l.failures, securityv1alpha1.RegistryScanFailure{
			Repository: repository, Tag: tag, Reason: string(registry.KindOf(err)), Message: cut(err.Error(), maxFailureMessage),
		})
	}
}

// maxFailureMessage bounds a failure's message, and the Ready message that quotes one, so that
// cut's result (the "..." added) stays within the API's 1024 characters.
const maxFailureMessage = 1024 - len("...")

// list lists the scan's repositories, their tags, the tags the selector selects and their digests,
// within the reconcile's deadline; what fails is in the listing's failures.
func (r *RegistryScanReconciler) list(ctx context.Context, scan *securityv1alpha1.RegistryScan, selector *registryscan.Selector) *listing {
	l := &listing{digests: map[string]*listedDigest{}}
	keychain, err := workload.Keychain(ctx, r.APIReader, scan.Namespace, scanPodSpec(scan))
	if err != nil {
		for _, entry := range scan.Spec.Repositories {
			l.fail(entry, "", err)
		}
		return l
	}
	seen := map[string]bool{}
	for _, entry := range scan.Spec.Repositories {
		repos, err := r.Lister.Repositories(ctx, entry, keychain)
		if err != nil {
			l.fail(entry, "", err)
			continue
		}
		for _, repo := range repos {
			if seen[repo] {
				continue
			}
			seen[repo] = true
			tags, err := r.Lister.Tags(ctx, repo, keychain)
			if err != nil {
				l.fail(repo, "", err)
				continue
			}
			l.repositories++
			selected, err := selector.Select(ctx, tags, r.Lister.Created(repo, keychain))
			if err != nil {
				l.fail(repo, "", registry.Classify(err))
				continue
			}
			if l.tags+len(selected) > MaxRegistryScanTags {
				l.fail(repo, "", registry.Errorf(registry.KindUnsupported, "the scan selects more than %d tags: select fewer", MaxRegistryScanTags))
				return l
			}
			digests, failed := r.Lister.Digests(ctx, repo, selected, keychain)
			for _, tag := range slices.Sorted(maps.Keys(failed)) {
				l.fail(repo, tag, failed[tag])
			}
			for tag, digest := range digests {
				l.tags++
				d := l.digests[digest]
				if d == nil {
					d = &listedDigest{repository: repo, tags: map[string]bool{}}
					l.digests[digest] = d
				}
				if repo < d.repository {
					// Reported under the first repository in sort order, with its tags only.
					d.repository = repo
					clear(d.tags)
				}
				if repo == d.repository {
					d.tags[tag] = true
				}
			}
		}
	}
	return l
}

// scanCovers reports whether one of scan's repositories is repository, or a prefix of it.
func scanCovers(scan *securityv1alpha1.RegistryScan, repository string) bool {
	for _, entry := range scan.Spec.Repositories {
		if e, err := registryscan.ParseEntry(entry); err == nil && e.Covers(repository) {
			return true
		}
	}
	return false
}

// scanPodSpec is a pod spec with the scan's credentials: its Secret and its service account's
// pull secrets, read as the kubelet would read a pod's.
func scanPodSpec(scan *securityv1alpha1.RegistryScan) *corev1.PodSpec {
	spec := &corev1.PodSpec{ServiceAccountName: scan.Spec.ServiceAccountName}
	if scan.Spec.SecretRef != nil {
		spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: scan.Spec.SecretRef.Name}}
	}
	return spec
}

// syncReports makes the reports of namespace name the scan as a source of exactly the digests
// listed, creating the reports missing. When the listing is not complete, no report loses the
// scan: only those listed are brought up to date.
func (r *RegistryScanReconciler) syncReports(ctx context.Context, namespace, scanName string, listed map[string]*listedDigest, complete bool) error {
	reports := &securityv1alpha1.ImageScanReportList{}
	if err := r.Client.List(ctx, reports, client.InNamespace(namespace), client.MatchingLabels{RegistryScanLabel: "true"}); err != nil {
		return err
	}
	var errs []error
	released := 0
	done := map[string]bool{}
	for i := range reports.Items {
		report := &reports.Items[i]
		d, ok := listed[report.Spec.Digest]
		if !ok && !complete {
			continue
		}
		if ok {
			done[report.Spec.Digest] = true
		}
		if err := r.setSource(ctx, report, scanName, d); err != nil {
			errs = append(errs, err)
		}
		if len(report.Status.Sources) == 0 {
			released++ // no scan keeps it now: it does not count against the bound
		}
	}
	room := MaxRegistryScanReports - len(reports.Items) + released
	for _, digest := range slices.Sorted(maps.Keys(listed)) {
		if done[digest] {
			continue
		}
		if room <= 0 {
			errs = append(errs, registry.Errorf(registry.KindUnsupported, "the namespace holds %d reports of registry scans, the most it may: list fewer", MaxRegistryScanReports))
			break
		}
		room--
		d := listed[digest]
		report, err := r.reportOf(ctx, namespace, digest, d)
		if err == nil {
			err = r.setSource(ctx, report, scanName, d)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reportOf returns the report of digest in namespace: one that exists already (a pod's, under
// another repository's name), else the one reportFor finds or makes.
func (r *RegistryScanReconciler) reportOf(ctx context.Context, namespace, digest string, d *listedDigest) (*securityv1alpha1.ImageScanReport, error) {
	existing := &securityv1alpha1.ImageScanReportList{}
	if err := r.Client.List(ctx, existing, client.InNamespace(namespace), client.MatchingFields{workload.IndexReportDigest: digest}); err != nil {
		return nil, err
	}
	for i := range existing.Items {
		if existing.Items[i].DeletionTimestamp.IsZero() {
			return &existing.Items[i], nil
		}
	}
	report, _, err := reportFor(ctx, r.Client, r.APIReader, namespace, securityv1alpha1.ImageScanReportSpec{
		Image: d.repository, Digest: digest, Tags: sortedKeys(d.tags),
	})
	return report, err
}

// setSource makes report name scanName as a source with d's tags (none when d is nil: the scan
// no longer lists it), with the label that marks reports some scan lists. Each scan of the
// namespace writes the list of sources: on a conflict the report is read again, live, and the
// write tried again.
func (r *RegistryScanReconciler) setSource(ctx context.Context, report *securityv1alpha1.ImageScanReport, scanName string, d *listedDigest) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		err := r.writeSource(ctx, report, scanName, d)
		if apierrors.IsConflict(err) {
			if gerr := r.APIReader.Get(ctx, client.ObjectKeyFromObject(report), report); gerr != nil {
				return gerr
			}
		}
		return err
	})
	return client.IgnoreNotFound(err)
}

func (r *RegistryScanReconciler) writeSource(ctx context.Context, report *securityv1alpha1.ImageScanReport, scanName string, d *listedDigest) error {
	before := report.DeepCopy()
	sources := slices.DeleteFunc(slices.Clone(report.Status.Sources), func(s securityv1alpha1.ReportSource) bool { return s.RegistryScan == scanName })
	if d != nil && len(sources) >= maxSources {
		return registry.Errorf(registry.KindUnsupported, "report %s is listed by %d scans already, the most it names", report.Name, maxSources)
	}
	if d != nil {
		tags := sortedKeys(d.tags)
		if len(tags) > maxSourceTags {
			tags = tags[:maxSourceTags]
		}
		sources = append(sources, securityv1alpha1.ReportSource{RegistryScan: scanName, Repository: d.repository, Tags: tags})
		sort.Slice(sources, func(i, j int) bool { return sources[i].RegistryScan < sources[j].RegistryScan })
	}
	if len(sources) == 0 {
		sources = nil
	}
	if !equality.Semantic.DeepEqual(sources, before.Status.Sources) {
		report.Status.Sources = sources
		// Not through writeStatus: the report's observed generation is the report controller's
		// to say.
		if _, err := patchIfChanged(before, report, []client.MergeFromOption{client.MergeFromWithOptimisticLock{}}, func(p client.Patch) error {
			return r.Client.Status().Patch(ctx, report, p)
		}); err != nil {
			return err
		}
	}
	// The label follows the sources the server holds now (report is what the patch returned),
	// under the same lock: a scan adding itself meanwhile makes this write a conflict. A report
	// no pod runs has the tags that point at its digest now (admission's last-known lookup reads
	// them): those the sources found in the report's own repository only, never another's.
	before = report.DeepCopy()
	if len(report.Status.Sources) > 0 {
		metav1.SetMetaDataLabel(&report.ObjectMeta, RegistryScanLabel, "true")
		if len(report.Status.Workloads) == 0 {
			tags := map[string]bool{}
			for _, s := range report.Status.Sources {
				if s.Repository == report.Spec.Image {
					for _, t := range s.Tags {
						tags[t] = true
					}
				}
			}
			report.Spec.Tags = sortedKeys(tags)
		}
	} else {
		delete(report.Labels, RegistryScanLabel)
	}
	_, err := patchIfChanged(before, report, []client.MergeFromOption{client.MergeFromWithOptimisticLock{}}, func(p client.Patch) error {
		return r.Client.Patch(ctx, report, p)
	})
	return err
}

// summarize counts the scan's digests from the reports that name it: scanned, failed, their
// findings and the worst images.
// It returns how many digests still wait for their first scan (or for their report to be seen).
func (r *RegistryScanReconciler) summarize(ctx context.Context, scan *securityv1alpha1.RegistryScan) (int32, error) {
	reports := &securityv1alpha1.ImageScanReportList{}
	if err := r.Client.List(ctx, reports, client.InNamespace(scan.Namespace), client.MatchingLabels{RegistryScanLabel: "true"}); err != nil {
		return 0, err
	}
	st := &scan.Status
	listingFailures := slices.DeleteFunc(slices.Clone(st.Failures), func(f securityv1alpha1.RegistryScanFailure) bool { return f.Digest != "" })
	// What the last listing failed to list: known since it ran, else (a restart) as many as the
	// status names, until the next listing (soon: a listing that failed is retried).
	failed := len(listingFailures)
	if state, ok := r.listingState(scan); ok {
		failed = state.failed
	}
	failures := listingFailures
	var scanned, scanFailed int32
	summary := &securityv1alpha1.VulnerabilitySummary{}
	var worst []securityv1alpha1.RegistryScanImage
	for i := range reports.Items {
		report := &reports.Items[i]
		i := slices.IndexFunc(report.Status.Sources, func(s securityv1alpha1.ReportSource) bool { return s.RegistryScan == scan.Name })
		if i < 0 || !report.DeletionTimestamp.IsZero() {
			continue
		}
		scannedCond := meta.FindStatusCondition(report.Status.Conditions, securityv1alpha1.ConditionScanned)
		if scannedCond == nil {
			continue // waits for its first scan
		}
		// The findings of its last scan: current, or kept through a failed rescan.
		s := report.Status.Summary
		if s != nil {
			for _, sev := range securityv1alpha1.Severities {
				summary.Add(sev, s.Count(sev))
			}
			summary.Fixable += s.Fixable
			summary.Total += s.Total
		}
		switch {
		case scannedCond.Status == metav1.ConditionTrue && s != nil:
			scanned++
			if s.Critical+s.High > 0 {
				tags := report.Status.Sources[i].Tags
				worst = append(worst, securityv1alpha1.RegistryScanImage{
					Image: report.Spec.Image, Digest: report.Spec.Digest, Tags: tags[:min(8, len(tags))],
					Report: report.Name, Critical: s.Critical, High: s.High,
				})
			}
		case scannedCond.Status == metav1.ConditionFalse:
			scanFailed++
			if len(failures) < maxScanFailures {
				failures = append(failures, securityv1alpha1.RegistryScanFailure{
					Repository: report.Spec.Image, Digest: report.Spec.Digest, Reason: scannedCond.Reason,
					Message: cut(scannedCond.Message, maxFailureMessage),
				})
			}
		}
	}
	sort.Slice(worst, func(i, j int) bool {
		a, b := worst[i], worst[j]
		if a.Critical != b.Critical {
			return a.Critical > b.Critical
		}
		if a.High != b.High {
			return a.High > b.High
		}
		return a.Report < b.Report
	})
	if len(worst) > maxWorst {
		worst = worst[:maxWorst]
	}
	st.Scanned, st.Failed = scanned, int32(failed)+scanFailed
	st.Summary, st.Worst, st.Failures = summary, worst, failures
	if len(st.Failures) == 0 {
		st.Failures = nil
	}
	return max(0, st.Digests-scanned-scanFailed), nil
}

// setConditions sets Ready and Reconciling from the status.
func (r *RegistryScanReconciler) setConditions(scan *securityv1alpha1.RegistryScan, pending int32) {
	st := scan.Status
	counts := fmt.Sprintf("%d repositories, %d tags, %d digests: %d scanned, %d failed", st.Repositories, st.Tags, st.Digests, st.Scanned, st.Failed)
	switch {
	case scan.Spec.Suspend:
		msg := "listing is suspended"
		if st.LastListTime != nil {
			msg += "; the counts are those of the listing at " + st.LastListTime.UTC().Format(time.RFC3339)
		}
		status := metav1.ConditionFalse
		if st.LastListTime != nil {
			status = metav1.ConditionTrue
		}
		setCondition(scan, securityv1alpha1.ConditionReady, status, ReasonSuspended, msg)
		removeCondition(scan, securityv1alpha1.ConditionReconciling)
	case listingFailed(scan):
		f := st.Failures[slices.IndexFunc(st.Failures, func(f securityv1alpha1.RegistryScanFailure) bool { return f.Digest == "" })]
		msg := fmt.Sprintf("listing failed in part (%s), retried: %s: %s", counts, f.Repository, f.Message)
		setCondition(scan, securityv1alpha1.ConditionReady, metav1.ConditionFalse, f.Reason, cut(msg, maxFailureMessage))
		setCondition(scan, securityv1alpha1.ConditionReconciling, metav1.ConditionTrue, f.Reason, "the listing is retried")
	case pending > 0:
		msg := fmt.Sprintf("%d of %d digests wait for their scan (%s)", pending, st.Digests, counts)
		setCondition(scan, securityv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonScansPending, msg)
		setCondition(scan, securityv1alpha1.ConditionReconciling, metav1.ConditionTrue, ReasonScansPending, msg)
	default:
		setCondition(scan, securityv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonListed, counts)
		removeCondition(scan, securityv1alpha1.ConditionReconciling)
	}
}

// setStalled says the scan cannot work as written.
func setStalled(scan *securityv1alpha1.RegistryScan, reason, msg string) {
	setCondition(scan, securityv1alpha1.ConditionStalled, metav1.ConditionTrue, reason, msg)
	setCondition(scan, securityv1alpha1.ConditionReady, metav1.ConditionFalse, reason, msg)
	removeCondition(scan, securityv1alpha1.ConditionReconciling)
}

// scansOfReport queues the scans a report names as sources.
func scansOfReport(_ context.Context, obj client.Object) []reconcile.Request {
	report, ok := obj.(*securityv1alpha1.ImageScanReport)
	if !ok {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(report.Status.Sources))
	for _, s := range report.Status.Sources {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: report.Namespace, Name: s.RegistryScan}})
	}
	return reqs
}

// reportCountsChanged passes a report event that may change a scan's counts: its sources, its
// Scanned condition or its summary.
var reportCountsChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		a, okA := e.ObjectOld.(*securityv1alpha1.ImageScanReport)
		b, okB := e.ObjectNew.(*securityv1alpha1.ImageScanReport)
		if !okA || !okB {
			return false
		}
		ca := meta.FindStatusCondition(a.Status.Conditions, securityv1alpha1.ConditionScanned)
		cb := meta.FindStatusCondition(b.Status.Conditions, securityv1alpha1.ConditionScanned)
		return !equality.Semantic.DeepEqual(a.Status.Sources, b.Status.Sources) ||
			!equality.Semantic.DeepEqual(a.Status.Summary, b.Status.Summary) ||
			(ca == nil) != (cb == nil) || (ca != nil && (ca.Status != cb.Status || ca.Reason != cb.Reason))
	},
}

// requestedOrSpecChanged passes a scan's creation, a change of its spec or of its
// RequestedAtAnnotation; not its status writes.
var requestedOrSpecChanged = predicate.Or(predicate.GenerationChangedPredicate{},
	predicate.AnnotationChangedPredicate{})

// SetupWithManager watches scans, and the reports that name them.
func (r *RegistryScanReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.RetryInterval <= 0 {
		r.RetryInterval = DefaultRegistryScanRetry
	}
	if r.Timeout <= 0 {
		r.Timeout = DefaultRegistryScanTimeout
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("registryscan").
		For(&securityv1alpha1.RegistryScan{}, builder.WithPredicates(requestedOrSpecChanged)).
		Watches(&securityv1alpha1.ImageScanReport{}, handler.EnqueueRequestsFromMapFunc(scansOfReport),
			builder.WithPredicates(reportCountsChanged)).
		WithOptions(controller.Options{MaxConcurrentReconciles: 2, ReconciliationTimeout: r.Timeout + reportWritesTimeout + statusWriteTimeout}).
		Complete(r)
}
