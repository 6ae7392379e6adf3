package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
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
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/workload"
)

// PodReconciler keeps one ImageScanReport per namespace and image digest that pods of the
// namespace run, naming the workloads that use it, and deletes reports no pod has used for
// Retention. It reconciles a namespace at a time: a report gathers every pod of its namespace.
type PodReconciler struct {
	Client client.Client
	// APIReader reads pull secrets and service accounts by name, uncached.
	APIReader client.Reader
	Registry  *registry.Client
	// Retention is how long a report no pod uses is kept; 0 deletes it at once.
	Retention time.Duration
	// ExcludedNamespaces are never reported on; nor are namespaces labelled
	// imageguard.dev/exclude=true.
	ExcludedNamespaces []string
	// ResolveTTL is how long a tag's resolved digest is reused for pods the kubelet has not
	// reported an image ID for yet.
	ResolveTTL time.Duration
	// Inventories tells whether a digest was analysed already; nil: never.
	Inventories interface {
		Analysed(digest, platform string) bool
	}
	Clock clock.PassiveClock
	// Concurrency is how many namespaces are reconciled at once, so that one slow namespace
	// never holds the others; 0 means 1.
	Concurrency int
	// Timeout bounds one reconcile; 0 means none.
	Timeout time.Duration

	lookups *tagLookups
}

// ExcludeLabel on a namespace opts it out of scanning.
const ExcludeLabel = "imageguard.dev/exclude"

// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups=apps,resources=replicasets,verbs=get;list;watch
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch
// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagescanreports,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagescanreports/status,verbs=get;update;patch

// Reconcile brings the reports of the namespace req.Name in line with its pods.
func (r *PodReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx).WithValues("namespace", req.Name)
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: req.Name}, ns); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if excludedNamespace(ns, r.ExcludedNamespaces) || !ns.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	pods := &corev1.PodList{}
	if err := r.Client.List(ctx, pods, client.InNamespace(req.Name)); err != nil {
		return ctrl.Result{}, err
	}
	uses, skipped, gatherErr := r.imageUses(ctx, pods.Items)
	pending, lookupErr := r.lookUpTags(uses)
	desired := group(uses)
	ensureErr := r.ensureReports(ctx, req.Name, desired)
	// Unused reports are collected even when some image's reference is malformed (desired holds
	// every digest in use), not while a tag is being looked up, nor when a pod was left out for
	// want of its owner or node (a failed read): its reports would be marked unused meanwhile.
	var requeue time.Duration
	if !pending && !skipped {
		var err error
		if requeue, err = r.collectGarbage(ctx, req.Name, desired); err != nil {
			return ctrl.Result{}, err
		}
	}
	if err := errors.Join(gatherErr, lookupErr, ensureErr); err != nil {
		// Retried with backoff; the reports of every other image are in place already.
		log.Info("Some images have no current report yet", "error", err.Error())
		return ctrl.Result{}, err
	}
	if pending {
		// The end of each lookup queues the namespace; this is the safety net.
		requeue = minPositive(requeue, r.lookups.Timeout)
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// excludedNamespace reports whether ns is opted out of scanning, by name or by label.
func excludedNamespace(ns *corev1.Namespace, excluded []string) bool {
	return slices.Contains(excluded, ns.Name) || ns.Labels[ExcludeLabel] == "true"
}

// reportKey is what tells reports of a namespace apart: the digest, and the platform of the nodes
// that run it ("" for policy.DefaultPlatform), whose image of an index digest is scanned.
type reportKey struct {
	digest, platform string
}

// desiredReport is what the pods of a namespace say about one digest on one platform.
type desiredReport struct {
	repository string
	digest     string
	platform   string
	tags       map[string]bool
	workloads  map[workloadRef]map[string]bool
}

// workloadRef names a top-level workload in status.workloads.
type workloadRef struct {
	Kind string
	Name string
}

// imageUse is one container (or image volume) of a pod: its image and, once known, its digest.
type imageUse struct {
	pod    *corev1.Pod
	owner  workloadRef
	name   string
	image  string
	img    policy.Image
	digest string
	// platform is that of the pod's node ("" for policy.DefaultPlatform).
	platform string
}

// imageUses lists the images the pods run, with the digest the kubelet reported or the reference
// names. Pods that cannot be attributed and malformed references are left out and reported in
// the error, so one bad pod does not hold back the others.
func (r *PodReconciler) imageUses(ctx context.Context, pods []corev1.Pod) (_ []*imageUse, skipped bool, _ error) {
	var uses []*imageUse
	var errs []error
	for i := range pods {
		pod := &pods[i]
		if !pod.DeletionTimestamp.IsZero() || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		top, err := workload.TopOwner(ctx, r.Client, pod)
		if err != nil {
			errs, skipped = append(errs, err), true
			continue
		}
		platform, err := r.podPlatform(ctx, pod)
		if err != nil {
			errs, skipped = append(errs, err), true
			continue
		}
		for _, c := range podContainers(pod) {
			img, err := policy.ParseImage(c.Image)
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s container %s: %w", pod.Name, c.Name, err))
				continue
			}
			digest := digestOf(c.ImageID)
			if digest == "" {
				digest = img.Digest
			}
			uses = append(uses, &imageUse{pod: pod, owner: workloadRef{Kind: top.Kind, Name: top.Name}, name: c.Name, image: c.Image, img: img, digest: digest, platform: platform})
		}
	}
	return uses, skipped, errors.Join(errs...)
}

// podPlatform returns the platform whose image pod runs of an index digest: its node's
// (status.nodeInfo), else, while it is not scheduled (or its node is not known yet), the one its
// nodeSelector asks for, else policy.DefaultPlatform, which "" stands for.
func (r *PodReconciler) podPlatform(ctx context.Context, pod *corev1.Pod) (string, error) {
	var osName, arch string
	if pod.Spec.NodeName != "" {
		node := &corev1.Node{}
		err := r.Client.Get(ctx, client.ObjectKey{Name: pod.Spec.NodeName}, node)
		if client.IgnoreNotFound(err) != nil {
			return "", fmt.Errorf("pod %s: reading its node %s: %w", pod.Name, pod.Spec.NodeName, err)
		}
		osName, arch = node.Status.NodeInfo.OperatingSystem, node.Status.NodeInfo.Architecture
	}
	if arch == "" {
		osName, arch = pod.Spec.NodeSelector[corev1.LabelOSStable], pod.Spec.NodeSelector[corev1.LabelArchStable]
	}
	return workload.NodePlatform(osName, arch), nil
}

// lookUpTags gives the uses without a digest the digest of their tag, as tagLookups knows it:
// no reconcile waits on a registry. It reports whether some lookup is still running; uses whose
// lookup failed keep no digest and are reported in the error.
func (r *PodReconciler) lookUpTags(uses []*imageUse) (pending bool, err error) {
	var errs []error
	for _, u := range uses {
		if u.digest != "" {
			continue
		}
		digest, running, err := r.lookups.Digest(u.pod, u.image)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("pod %s container %s: %w", u.pod.Name, u.name, err))
		case running:
			pending = true
		default:
			u.digest = digest
		}
	}
	return pending, errors.Join(errs...)
}

// group collects the uses with a digest into one desired report per digest and platform.
func group(uses []*imageUse) map[reportKey]*desiredReport {
	desired := map[reportKey]*desiredReport{}
	for _, u := range uses {
		if u.digest == "" {
			continue
		}
		key := reportKey{digest: u.digest, platform: u.platform}
		d := desired[key]
		if d == nil {
			d = &desiredReport{repository: u.img.Repository, digest: u.digest, platform: u.platform, tags: map[string]bool{}, workloads: map[workloadRef]map[string]bool{}}
			desired[key] = d
		}
		// One digest under several repositories (a mirror): report the first in sort order, with
		// its tags only (a tag of another repository names another image under this one's name).
		if u.img.Repository < d.repository {
			d.repository = u.img.Repository
			clear(d.tags)
		}
		if u.img.Tag != "" && u.img.Repository == d.repository {
			d.tags[u.img.Tag] = true
		}
		if d.workloads[u.owner] == nil {
			d.workloads[u.owner] = map[string]bool{}
		}
		d.workloads[u.owner][u.name] = true
	}
	return desired
}

// lookupSlots bounds the tag lookups that run at once.
const lookupSlots = 16

// lookUp resolves image in namespace with the pull secrets of spec.
func (r *PodReconciler) lookUp(ctx context.Context, namespace string, spec *corev1.PodSpec, image string) (string, error) {
	keychain, err := workload.Keychain(ctx, r.APIReader, namespace, spec)
	if err != nil {
		return "", err
	}
	return r.Registry.ResolveDigest(ctx, image, keychain)
}

// spec and workloads of a desired report, in the order the API keeps them.
func (d *desiredReport) spec() securityv1alpha1.ImageScanReportSpec {
	return securityv1alpha1.ImageScanReportSpec{Image: d.repository, Digest: d.digest, Platform: d.platform, Tags: sortedKeys(d.tags)}
}

func (d *desiredReport) statusWorkloads() []securityv1alpha1.Workload {
	out := make([]securityv1alpha1.Workload, 0, len(d.workloads))
	for ref, containers := range d.workloads {
		out = append(out, securityv1alpha1.Workload{Kind: ref.Kind, Name: ref.Name, Containers: sortedKeys(containers)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].Name < out[j].Name
	})
	if len(out) > 256 {
		out = out[:256]
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	keys := slices.Sorted(maps.Keys(m))
	if len(keys) > 64 {
		keys = keys[:64]
	}
	return keys
}

// ensureReports creates missing reports and patches spec tags, workloads and the unused mark only
// where they differ: a steady namespace costs no write.
func (r *PodReconciler) ensureReports(ctx context.Context, namespace string, desired map[reportKey]*desiredReport) error {
	var errs []error
	for _, d := range desired {
		report, created, err := reportFor(ctx, r.Client, r.APIReader, namespace, d.spec())
		if err != nil {
			errs = append(errs, err) // the other digests' reports are kept current still
			continue
		}
		if !created {
			before := report.DeepCopy()
			report.Spec.Tags = d.spec().Tags
			delete(report.Annotations, UnusedSinceAnnotation)
			if _, err := writeObject(ctx, r.Client, before, report); err != nil {
				return err
			}
		}
		if err := r.writeWorkloads(ctx, report, d, created); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// writeWorkloads writes the report's status.workloads. A report just created whose digest still
// has to be analysed (which takes seconds to minutes, and may wait in the queue) also gets
// Reconciling and Ready=False with reason ScanPending, in the same write; one whose inventory is
// kept is matched in milliseconds, and saying so would only race the report controller.
func (r *PodReconciler) writeWorkloads(ctx context.Context, report *securityv1alpha1.ImageScanReport, d *desiredReport, created bool) error {
	before := report.DeepCopy()
	report.Status.Workloads = d.statusWorkloads()
	if !created || (r.Inventories != nil && r.Inventories.Analysed(report.Spec.Digest, report.Spec.Platform)) {
		_, err := writeStatus(ctx, r.Client, before, report)
		return err
	}
	pending := report.DeepCopy()
	setScanPending(pending)
	// The report controller may have scanned the report in the moment since it was created: its
	// conditions then stand, this write fails as a conflict, and the workloads are written alone.
	_, err := writeStatus(ctx, r.Client, before, pending, client.MergeFromWithOptimisticLock{})
	if !apierrors.IsConflict(err) {
		return err
	}
	_, err = writeStatus(ctx, r.Client, before, report)
	return err
}

// collectGarbage marks reports no pod uses and deletes them once marked for Retention; it returns
// when to look again. A report is never deleted for a scan error, only for being unused.
func (r *PodReconciler) collectGarbage(ctx context.Context, namespace string, desired map[reportKey]*desiredReport) (time.Duration, error) {
	reports := &securityv1alpha1.ImageScanReportList{}
	if err := r.Client.List(ctx, reports, client.InNamespace(namespace)); err != nil {
		return 0, err
	}
	var next time.Duration
	for i := range reports.Items {
		report := &reports.Items[i]
		if _, used := desired[reportKey{digest: report.Spec.Digest, platform: report.Spec.Platform}]; used || !report.DeletionTimestamp.IsZero() {
			continue
		}
		listed, err := r.listedByScan(ctx, report)
		if err != nil {
			return 0, err
		}
		if listed {
			// A registry scan keeps it: not unused, whatever pods do; no pod names it any more.
			if _, marked := report.Annotations[UnusedSinceAnnotation]; marked {
				before := report.DeepCopy()
				delete(report.Annotations, UnusedSinceAnnotation)
				if _, err := writeObject(ctx, r.Client, before, report); err != nil {
					return 0, client.IgnoreNotFound(err)
				}
			}
			if len(report.Status.Workloads) > 0 {
				before := report.DeepCopy()
				report.Status.Workloads = nil
				if _, err := patchIfChanged(before, report, nil, func(p client.Patch) error { return r.Client.Status().Patch(ctx, report, p) }); err != nil {
					return 0, client.IgnoreNotFound(err)
				}
			}
			continue
		}
		since, marked := report.Annotations[UnusedSinceAnnotation]
		t, err := time.Parse(time.RFC3339, since)
		if !marked || err != nil {
			if r.Retention > 0 {
				before := report.DeepCopy()
				metav1.SetMetaDataAnnotation(&report.ObjectMeta, UnusedSinceAnnotation, r.Clock.Now().UTC().Format(time.RFC3339))
				if _, err := writeObject(ctx, r.Client, before, report); err != nil {
					return 0, client.IgnoreNotFound(err)
				}
				next = minPositive(next, r.Retention)
				continue
			}
			t = r.Clock.Now()
		}
		if left := r.Retention - r.Clock.Now().Sub(t); left > 0 {
			next = minPositive(next, left)
			continue
		}
		// The version read: a report a scan or a pod took up since is not deleted (a conflict,
		// looked at again).
		err = r.Client.Delete(ctx, report, client.Preconditions{UID: &report.UID, ResourceVersion: &report.ResourceVersion})
		if apierrors.IsConflict(err) {
			next = minPositive(next, time.Second)
			continue
		}
		if client.IgnoreNotFound(err) != nil {
			return 0, err
		}
	}
	return next, nil
}

// listedByScan reports whether a RegistryScan of the report's namespace lists it: a source that
// names a scan that is gone does not count.
func (r *PodReconciler) listedByScan(ctx context.Context, report *securityv1alpha1.ImageScanReport) (bool, error) {
	for _, s := range report.Status.Sources {
		err := r.Client.Get(ctx, client.ObjectKey{Namespace: report.Namespace, Name: s.RegistryScan}, &securityv1alpha1.RegistryScan{})
		if err == nil {
			return true, nil
		}
		if !apierrors.IsNotFound(err) {
			return false, err
		}
	}
	return false, nil
}

func minPositive(a, b time.Duration) time.Duration {
	if a == 0 || b < a {
		return b
	}
	return a
}

// sourcesChanged passes a report update that changes the scans that list it.
var sourcesChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		a, okA := e.ObjectOld.(*securityv1alpha1.ImageScanReport)
		b, okB := e.ObjectNew.(*securityv1alpha1.ImageScanReport)
		return okA && okB && len(a.Status.Sources) != len(b.Status.Sources)
	},
}

// SetupWithManager watches pods and reports, each event queueing its namespace.
func (r *PodReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.ResolveTTL == 0 {
		r.ResolveTTL = 5 * time.Minute
	}
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	r.lookups = newTagLookups(lookupSlots, r.lookUp)
	r.lookups.TTL, r.lookups.Clock = r.ResolveTTL, r.Clock
	if r.Registry != nil {
		// A lookup is a few requests (ping, token, HEAD), each within the registry timeout.
		r.lookups.Timeout = 3 * r.Registry.Timeout()
	}
	toNamespace := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: obj.GetNamespace()}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("pod").
		Watches(&corev1.Pod{}, toNamespace).
		// Only a report's creation, deletion, spec change or change of the scans that list it
		// concerns its namespace's pods; the report controller's status writes do not.
		Watches(&securityv1alpha1.ImageScanReport{}, toNamespace, builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{}, sourcesChanged))).
		// A scan deleted: the reports it listed may be unused now.
		Watches(&securityv1alpha1.RegistryScan{}, toNamespace, builder.WithPredicates(predicate.Funcs{
			CreateFunc: func(event.CreateEvent) bool { return false },
			UpdateFunc: func(event.UpdateEvent) bool { return false },
		})).
		WatchesRawSource(source.Channel(r.lookups.Events(), handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: obj.GetName()}}}
		}))).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Concurrency, ReconciliationTimeout: r.Timeout}).
		Complete(r)
}
