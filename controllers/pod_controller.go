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
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

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
	Inventories interface{ Analysed(digest string) bool }
	Clock       clock.PassiveClock

	resolved registry.DigestCache // namespace/image -> digest
}

// ExcludeLabel on a namespace opts it out of scanning.
const ExcludeLabel = "imageguard.dev/exclude"

// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
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
	desired, resolveErr := r.desiredReports(ctx, pods.Items)
	ensureErr := r.ensureReports(ctx, req.Name, desired)
	// Unused reports are collected even when some image failed: desired holds every digest in use.
	requeue, err := r.collectGarbage(ctx, req.Name, desired)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := errors.Join(resolveErr, ensureErr); err != nil {
		// Retried with backoff; the reports of every other image are in place already.
		log.Info("Some images have no current report yet", "error", err.Error())
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// excludedNamespace reports whether ns is opted out of scanning, by name or by label.
func excludedNamespace(ns *corev1.Namespace, excluded []string) bool {
	return slices.Contains(excluded, ns.Name) || ns.Labels[ExcludeLabel] == "true"
}

// desiredReport is what the pods of a namespace say about one digest.
type desiredReport struct {
	repository string
	digest     string
	tags       map[string]bool
	workloads  map[workloadRef]map[string]bool
}

// workloadRef names a top-level workload in status.workloads.
type workloadRef struct {
	Kind string
	Name string
}

// desiredReports groups the containers of pods by digest. Images that cannot be resolved are
// left out and reported in the error, so one bad image does not hold back the others.
func (r *PodReconciler) desiredReports(ctx context.Context, pods []corev1.Pod) (map[string]*desiredReport, error) {
	desired := map[string]*desiredReport{}
	var errs []error
	for i := range pods {
		pod := &pods[i]
		if !pod.DeletionTimestamp.IsZero() || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		top, err := workload.TopOwner(ctx, r.Client, pod)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		owner := workloadRef{Kind: top.Kind, Name: top.Name}
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
			if digest == "" {
				digest, err = r.resolve(ctx, pod, c.Image)
				if err != nil {
					errs = append(errs, fmt.Errorf("pod %s container %s: %w", pod.Name, c.Name, err))
					continue
				}
			}
			d := desired[digest]
			if d == nil {
				d = &desiredReport{repository: img.Repository, digest: digest, tags: map[string]bool{}, workloads: map[workloadRef]map[string]bool{}}
				desired[digest] = d
			}
			// One digest under several repositories (a mirror): report the first in sort order.
			if img.Repository < d.repository {
				d.repository = img.Repository
			}
			if img.Tag != "" {
				d.tags[img.Tag] = true
			}
			if d.workloads[owner] == nil {
				d.workloads[owner] = map[string]bool{}
			}
			d.workloads[owner][c.Name] = true
		}
	}
	return desired, errors.Join(errs...)
}

// resolve looks a tag up in the registry with the pod's pull secrets, reusing a recent answer.
func (r *PodReconciler) resolve(ctx context.Context, pod *corev1.Pod, image string) (string, error) {
	return r.resolved.Resolve(pod.Namespace+"/"+image, r.Clock.Now(), func() (string, error) {
		keychain, err := workload.Keychain(ctx, r.APIReader, pod.Namespace, &pod.Spec)
		if err != nil {
			return "", err
		}
		return r.Registry.ResolveDigest(ctx, image, keychain)
	})
}

// spec and workloads of a desired report, in the order the API keeps them.
func (d *desiredReport) spec() securityv1alpha1.ImageScanReportSpec {
	return securityv1alpha1.ImageScanReportSpec{Image: d.repository, Digest: d.digest, Tags: sortedKeys(d.tags)}
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
func (r *PodReconciler) ensureReports(ctx context.Context, namespace string, desired map[string]*desiredReport) error {
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
	if !created || (r.Inventories != nil && r.Inventories.Analysed(report.Spec.Digest)) {
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
func (r *PodReconciler) collectGarbage(ctx context.Context, namespace string, desired map[string]*desiredReport) (time.Duration, error) {
	reports := &securityv1alpha1.ImageScanReportList{}
	if err := r.Client.List(ctx, reports, client.InNamespace(namespace)); err != nil {
		return 0, err
	}
	var next time.Duration
	for i := range reports.Items {
		report := &reports.Items[i]
		if _, used := desired[report.Spec.Digest]; used || !report.DeletionTimestamp.IsZero() {
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
		if err := r.Client.Delete(ctx, report, client.Preconditions{UID: &report.UID}); client.IgnoreNotFound(err) != nil {
			return 0, err
		}
	}
	return next, nil
}

func minPositive(a, b time.Duration) time.Duration {
	if a == 0 || b < a {
		return b
	}
	return a
}

// SetupWithManager watches pods and reports, each event queueing its namespace.
func (r *PodReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.ResolveTTL == 0 {
		r.ResolveTTL = 5 * time.Minute
	}
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	// Failures are not kept: the workqueue retries them with backoff.
	r.resolved.TTL = r.ResolveTTL
	toNamespace := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: obj.GetNamespace()}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("pod").
		Watches(&corev1.Pod{}, toNamespace).
		// Only a report's creation, deletion or spec change concerns its namespace's pods; the
		// report controller's status writes do not.
		Watches(&securityv1alpha1.ImageScanReport{}, toNamespace, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(r)
}
