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
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/registry"
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
	Now        func() time.Time

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
	if err := r.ensureReports(ctx, req.Name, desired); err != nil {
		return ctrl.Result{}, err
	}
	requeue, err := r.collectGarbage(ctx, req.Name, desired)
	if err != nil {
		return ctrl.Result{}, err
	}
	if resolveErr != nil {
		// Retried with backoff; the reports of every other image are in place already.
		log.Info("Some images could not be resolved to a digest", "error", resolveErr.Error())
		return ctrl.Result{}, resolveErr
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// excludedNamespace reports whether ns is opted out of scanning, by name or by label.
func excludedNamespace(ns *corev1.Namespace, excluded []string) bool {
	return slices.Contains(excluded, ns.Name) || ns.Labels[ExcludeLabel] == "true"
}

func (r *PodReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// desiredReport is what the pods of a namespace say about one digest.
type desiredReport struct {
	repository string
	digest     string
	tags       map[string]bool
	workloads  map[workloadRef]map[string]bool
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
		owner, err := topOwner(ctx, r.Client, pod)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, c := range podImages(pod) {
			img, err := parseImage(c.Image)
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s container %s: %w", pod.Name, c.Container, err))
				continue
			}
			digest := digestOf(c.ImageID)
			if digest == "" {
				digest = img.Digest
			}
			if digest == "" {
				digest, err = r.resolve(ctx, pod, c.Image)
				if err != nil {
					errs = append(errs, fmt.Errorf("pod %s container %s: %w", pod.Name, c.Container, err))
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
			d.workloads[owner][c.Container] = true
		}
	}
	return desired, errors.Join(errs...)
}

// resolve looks a tag up in the registry with the pod's pull secrets, reusing a recent answer.
func (r *PodReconciler) resolve(ctx context.Context, pod *corev1.Pod, image string) (string, error) {
	return r.resolved.Resolve(pod.Namespace+"/"+image, r.now(), func() (string, error) {
		keychain, err := keychainFor(ctx, r.APIReader, []*corev1.Pod{pod})
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
	for _, d := range desired {
		report := &securityv1alpha1.ImageScanReport{}
		key := client.ObjectKey{Namespace: namespace, Name: ReportName(d.repository, d.digest)}
		err := r.Client.Get(ctx, key, report)
		if apierrors.IsNotFound(err) {
			report = newReport(namespace, d.spec())
			if err := r.Client.Create(ctx, report); err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
			if err := r.patchWorkloads(ctx, report, d); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if report.Spec.Digest != d.digest {
			continue // a 12-hex name collision between two digests: practically impossible
		}
		want := d.spec()
		_, unused := report.Annotations[UnusedSinceAnnotation]
		if !slices.Equal(report.Spec.Tags, want.Tags) || unused {
			base := report.DeepCopy()
			report.Spec.Tags = want.Tags
			delete(report.Annotations, UnusedSinceAnnotation)
			if err := r.Client.Patch(ctx, report, client.MergeFrom(base)); err != nil {
				return err
			}
		}
		if err := r.patchWorkloads(ctx, report, d); err != nil {
			return err
		}
	}
	return nil
}

func (r *PodReconciler) patchWorkloads(ctx context.Context, report *securityv1alpha1.ImageScanReport, d *desiredReport) error {
	want := d.statusWorkloads()
	if equalWorkloads(report.Status.Workloads, want) {
		return nil
	}
	base := report.DeepCopy()
	report.Status.Workloads = want
	return r.Client.Status().Patch(ctx, report, client.MergeFrom(base))
}

func equalWorkloads(a, b []securityv1alpha1.Workload) bool {
	return slices.EqualFunc(a, b, func(x, y securityv1alpha1.Workload) bool {
		return x.Kind == y.Kind && x.Name == y.Name && slices.Equal(x.Containers, y.Containers)
	})
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
				base := report.DeepCopy()
				metav1.SetMetaDataAnnotation(&report.ObjectMeta, UnusedSinceAnnotation, r.now().UTC().Format(time.RFC3339))
				if err := r.Client.Patch(ctx, report, client.MergeFrom(base)); err != nil {
					return 0, client.IgnoreNotFound(err)
				}
				next = minPositive(next, r.Retention)
				continue
			}
			t = r.now()
		}
		if left := r.Retention - r.now().Sub(t); left > 0 {
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
