package controllers

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/policy"
)

// maxNonCompliant bounds status.nonCompliant; the summary has the exact count.
const maxNonCompliant = 100

// PolicyReconciler judges every workload a policy matches and writes the verdict to the policy's
// status, as Events on workloads that change verdict, and as the imageguard_workload_compliant
// gauge. It serves ImagePolicy (namespaced) and ClusterImagePolicy (ClusterScoped true).
type PolicyReconciler struct {
	Client        client.Client
	Recorder      recorder.EventRecorder
	ClusterScoped bool
	Now           func() time.Time
	// Verifier checks signatures; nil until signature verification lands.
	Verifier policy.SignatureVerifier

	verdicts sync.Map // policy key + workload key -> bool (compliant), for transition events
}

// workload is a top-level workload with the images of its pod template.
type workload struct {
	obj        client.Object
	kind       string
	containers []corev1.Container
}

// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagepolicies;clusterimagepolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagepolicies/status;clusterimagepolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets;replicasets,verbs=get;list;watch
// +kubebuilder:rbac:groups=batch,resources=jobs;cronjobs,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods;namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile evaluates one policy over the workloads it matches.
func (r *PolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	obj, spec, st, err := r.get(ctx, req)
	if err != nil || obj == nil {
		return ctrl.Result{}, err
	}
	if !obj.GetDeletionTimestamp().IsZero() {
		return ctrl.Result{}, nil
	}
	base := st.DeepCopy()
	compiled, err := policy.Compile(spec.rules, r.Verifier)
	if err == nil {
		err = spec.validate()
	}
	if err != nil {
		setPolicyInvalid(st, obj.GetGeneration(), err)
		return ctrl.Result{}, r.patchStatus(ctx, obj, base, st, reconcile.TerminalError(err))
	}
	workloads, err := r.matchedWorkloads(ctx, obj.GetNamespace(), spec)
	if err != nil {
		return ctrl.Result{}, err
	}
	reports, err := r.reportsByImage(ctx, workloads)
	if err != nil {
		return ctrl.Result{}, err
	}
	now := r.now()
	var nonCompliant []securityv1alpha1.NonCompliantWorkload
	var next time.Time
	for _, w := range workloads {
		verdict := compiled.Evaluate(imagesOf(w, reports), now)
		if !verdict.NextChange.IsZero() && (next.IsZero() || verdict.NextChange.Before(next)) {
			next = verdict.NextChange
		}
		r.record(obj, w, verdict)
		if !verdict.Compliant() {
			reasons := verdict.Reasons()
			if len(reasons) > 16 {
				reasons = reasons[:16]
			}
			nonCompliant = append(nonCompliant, securityv1alpha1.NonCompliantWorkload{
				Namespace: w.obj.GetNamespace(), Kind: w.kind, Name: w.obj.GetName(), Reasons: reasons,
			})
		}
	}
	setPolicyStatus(st, obj.GetGeneration(), len(workloads), nonCompliant)
	result := ctrl.Result{}
	if !next.IsZero() {
		// The verdict changes by itself then (an exception expires, a scan gets too old).
		result.RequeueAfter = next.Sub(now) + time.Second
	}
	return result, r.patchStatus(ctx, obj, base, st, nil)
}

// policySpec is what both policy kinds have in common.
type policySpec struct {
	images            []string
	selector          *metav1.LabelSelector
	namespaceSelector *metav1.LabelSelector
	rules             securityv1alpha1.PolicyRules
}

// validate checks what the CRD's schema cannot: the selectors.
func (s policySpec) validate() error {
	for name, sel := range map[string]*metav1.LabelSelector{"match.selector": s.selector, "match.namespaceSelector": s.namespaceSelector} {
		if sel == nil {
			continue
		}
		if _, err := metav1.LabelSelectorAsSelector(sel); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// get reads the policy of req; nil when it is gone.
func (r *PolicyReconciler) get(ctx context.Context, req ctrl.Request) (client.Object, policySpec, *securityv1alpha1.ImagePolicyStatus, error) {
	if r.ClusterScoped {
		p := &securityv1alpha1.ClusterImagePolicy{}
		if err := r.Client.Get(ctx, req.NamespacedName, p); err != nil {
			return nil, policySpec{}, nil, client.IgnoreNotFound(err)
		}
		return p, policySpec{images: p.Spec.Match.Images, selector: p.Spec.Match.Selector,
			namespaceSelector: p.Spec.Match.NamespaceSelector, rules: p.Spec.Rules}, &p.Status, nil
	}
	p := &securityv1alpha1.ImagePolicy{}
	if err := r.Client.Get(ctx, req.NamespacedName, p); err != nil {
		return nil, policySpec{}, nil, client.IgnoreNotFound(err)
	}
	return p, policySpec{images: p.Spec.Match.Images, selector: p.Spec.Match.Selector, rules: p.Spec.Rules}, &p.Status, nil
}

// matchedWorkloads lists the workloads in scope whose labels match the selector and one of whose
// images matches match.images.
func (r *PolicyReconciler) matchedWorkloads(ctx context.Context, namespace string, spec policySpec) ([]workload, error) {
	namespaces := []string{namespace}
	if r.ClusterScoped {
		list := &corev1.NamespaceList{}
		if err := r.Client.List(ctx, list); err != nil {
			return nil, err
		}
		namespaces = namespaces[:0]
		for i := range list.Items {
			if ok, err := spec.selectsNamespace(&list.Items[i]); err != nil {
				return nil, err
			} else if ok {
				namespaces = append(namespaces, list.Items[i].Name)
			}
		}
	}
	return r.workloadsIn(ctx, namespaces, spec)
}

// selectsNamespace reports whether a cluster policy's namespaceSelector selects ns.
func (s policySpec) selectsNamespace(ns *corev1.Namespace) (bool, error) {
	if s.namespaceSelector == nil {
		return true, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(s.namespaceSelector)
	if err != nil {
		return false, err
	}
	return sel.Matches(labels.Set(ns.Labels)), nil
}

// workloadsIn lists the matched workloads of namespaces, sorted.
func (r *PolicyReconciler) workloadsIn(ctx context.Context, namespaces []string, spec policySpec) ([]workload, error) {
	sel := labels.Everything()
	if spec.selector != nil {
		var err error
		if sel, err = metav1.LabelSelectorAsSelector(spec.selector); err != nil {
			return nil, err
		}
	}
	globs, err := policy.CompileGlobs(spec.images)
	if err != nil {
		return nil, err
	}
	var out []workload
	for _, ns := range namespaces {
		all, err := r.workloads(ctx, ns)
		if err != nil {
			return nil, err
		}
		for _, w := range all {
			if !sel.Matches(labels.Set(w.obj.GetLabels())) || !imagesMatch(globs, w) {
				continue
			}
			out = append(out, w)
		}
	}
	sort.Slice(out, func(i, j int) bool { return workloadKey(out[i]) < workloadKey(out[j]) })
	return out, nil
}

func imagesMatch(globs []policy.Glob, w workload) bool {
	if len(globs) == 0 {
		return true
	}
	for _, c := range w.containers {
		if img, err := parseImage(c.Image); err == nil && policy.AnyMatch(globs, img) {
			return true
		}
	}
	return false
}

func workloadKey(w workload) string {
	return w.obj.GetNamespace() + "/" + w.kind + "/" + w.obj.GetName()
}

// workloads lists the top-level workloads of a namespace: Deployments, StatefulSets, DaemonSets,
// CronJobs, Jobs and ReplicaSets without an owner, and Pods without a controller.
func (r *PolicyReconciler) workloads(ctx context.Context, ns string) ([]workload, error) {
	var out []workload
	in := client.InNamespace(ns)
	template := func(spec corev1.PodSpec) []corev1.Container {
		return append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	}
	deployments := &appsv1.DeploymentList{}
	if err := r.Client.List(ctx, deployments, in); err != nil {
		return nil, err
	}
	for i := range deployments.Items {
		d := &deployments.Items[i]
		out = append(out, workload{obj: d, kind: "Deployment", containers: template(d.Spec.Template.Spec)})
	}
	statefulSets := &appsv1.StatefulSetList{}
	if err := r.Client.List(ctx, statefulSets, in); err != nil {
		return nil, err
	}
	for i := range statefulSets.Items {
		s := &statefulSets.Items[i]
		out = append(out, workload{obj: s, kind: "StatefulSet", containers: template(s.Spec.Template.Spec)})
	}
	daemonSets := &appsv1.DaemonSetList{}
	if err := r.Client.List(ctx, daemonSets, in); err != nil {
		return nil, err
	}
	for i := range daemonSets.Items {
		d := &daemonSets.Items[i]
		out = append(out, workload{obj: d, kind: "DaemonSet", containers: template(d.Spec.Template.Spec)})
	}
	cronJobs := &batchv1.CronJobList{}
	if err := r.Client.List(ctx, cronJobs, in); err != nil {
		return nil, err
	}
	for i := range cronJobs.Items {
		c := &cronJobs.Items[i]
		out = append(out, workload{obj: c, kind: "CronJob", containers: template(c.Spec.JobTemplate.Spec.Template.Spec)})
	}
	jobs := &batchv1.JobList{}
	if err := r.Client.List(ctx, jobs, in); err != nil {
		return nil, err
	}
	for i := range jobs.Items {
		if j := &jobs.Items[i]; metav1.GetControllerOf(j) == nil {
			out = append(out, workload{obj: j, kind: "Job", containers: template(j.Spec.Template.Spec)})
		}
	}
	replicaSets := &appsv1.ReplicaSetList{}
	if err := r.Client.List(ctx, replicaSets, in); err != nil {
		return nil, err
	}
	for i := range replicaSets.Items {
		if rs := &replicaSets.Items[i]; metav1.GetControllerOf(rs) == nil {
			out = append(out, workload{obj: rs, kind: "ReplicaSet", containers: template(rs.Spec.Template.Spec)})
		}
	}
	pods := &corev1.PodList{}
	if err := r.Client.List(ctx, pods, in); err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; metav1.GetControllerOf(p) == nil {
			out = append(out, workload{obj: p, kind: "Pod", containers: template(p.Spec)})
		}
	}
	return out, nil
}

// reportIndex finds the report of an image in a namespace: by digest, else by repository and tag
// (the newest report when a tag moved).
type reportIndex map[string]*securityv1alpha1.ImageScanReport

func (r *PolicyReconciler) reportsByImage(ctx context.Context, workloads []workload) (reportIndex, error) {
	idx := reportIndex{}
	seen := map[string]bool{}
	for _, w := range workloads {
		ns := w.obj.GetNamespace()
		if seen[ns] {
			continue
		}
		seen[ns] = true
		list := &securityv1alpha1.ImageScanReportList{}
		if err := r.Client.List(ctx, list, client.InNamespace(ns)); err != nil {
			return nil, err
		}
		for i := range list.Items {
			rep := &list.Items[i]
			idx[ns+"@"+rep.Spec.Digest] = rep
			for _, tag := range rep.Spec.Tags {
				key := ns + "/" + rep.Spec.Image + ":" + tag
				if old, ok := idx[key]; !ok || old.CreationTimestamp.Before(&rep.CreationTimestamp) {
					idx[key] = rep
				}
			}
		}
	}
	return idx, nil
}

// imagesOf returns the images of w with their reports.
func imagesOf(w workload, reports reportIndex) []policy.Image {
	var out []policy.Image
	for _, c := range w.containers {
		img, err := parseImage(c.Image)
		if err != nil {
			out = append(out, policy.Image{Container: c.Name, Repository: c.Image})
			continue
		}
		pi := img
		pi.Container = c.Name
		ns := w.obj.GetNamespace()
		rep := reports[ns+"@"+img.Digest]
		if rep == nil && img.Digest == "" {
			rep = reports[ns+"/"+img.Repository+":"+img.Tag]
		}
		pi.Report = policy.ReportOf(rep)
		out = append(out, pi)
	}
	return out
}

// record updates the compliance gauge and emits an Event on the workload when its verdict changed.
func (r *PolicyReconciler) record(p client.Object, w workload, v policy.Verdict) {
	compliant := v.Compliant()
	policyName := policyRef(p)
	value := 0.0
	if compliant {
		value = 1
	}
	metrics.WorkloadCompliant.With(prometheus.Labels{
		"policy": policyName, "namespace": w.obj.GetNamespace(), "kind": w.kind, "name": w.obj.GetName(),
	}).Set(value)
	key := policyName + "|" + workloadKey(w)
	prev, seen := r.verdicts.Swap(key, compliant)
	if r.Recorder == nil || (seen && prev.(bool) == compliant) || (!seen && compliant) {
		return
	}
	if compliant {
		r.Recorder.Eventf(w.obj, p, corev1.EventTypeNormal, securityv1alpha1.ReasonAllCompliant, "Evaluate",
			"%s complies with %s", w.kind, policyName)
		return
	}
	first := v.FirstFailure()
	r.Recorder.Eventf(w.obj, p, corev1.EventTypeWarning, securityv1alpha1.ReasonNonCompliant, "Evaluate",
		"%s breaks %s: %s: %s (%s)", w.kind, policyName, first.Rule, first.Message, first.Image)
}

func policyRef(p client.Object) string {
	if p.GetNamespace() == "" {
		return "ClusterImagePolicy/" + p.GetName()
	}
	return "ImagePolicy/" + p.GetNamespace() + "/" + p.GetName()
}

func setPolicyInvalid(st *securityv1alpha1.ImagePolicyStatus, generation int64, err error) {
	msg := "the policy can never be evaluated: " + err.Error()
	for _, c := range []string{securityv1alpha1.ConditionReady, securityv1alpha1.ConditionCompliant} {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: c, Status: metav1.ConditionFalse,
			Reason: securityv1alpha1.ReasonInvalidPolicy, Message: msg, ObservedGeneration: generation})
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: securityv1alpha1.ConditionStalled, Status: metav1.ConditionTrue,
		Reason: securityv1alpha1.ReasonInvalidPolicy, Message: msg, ObservedGeneration: generation})
	st.ObservedGeneration = generation
}

// setPolicyStatus writes the verdict: Ready (evaluated) and Compliant, apart, so that findings
// never read as a failed object in GitOps tools.
func setPolicyStatus(st *securityv1alpha1.ImagePolicyStatus, generation int64, workloads int, nonCompliant []securityv1alpha1.NonCompliantWorkload) {
	st.ObservedGeneration = generation
	st.Summary = &securityv1alpha1.PolicySummary{
		Workloads: int32(workloads), NonCompliant: int32(len(nonCompliant)), Compliant: int32(workloads - len(nonCompliant)),
	}
	st.NonCompliant = nonCompliant
	if len(st.NonCompliant) > maxNonCompliant {
		st.NonCompliant = st.NonCompliant[:maxNonCompliant]
	}
	meta.RemoveStatusCondition(&st.Conditions, securityv1alpha1.ConditionStalled)
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: securityv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: securityv1alpha1.ReasonEvaluated, ObservedGeneration: generation,
		Message: fmt.Sprintf("evaluated %d workloads", workloads)})
	compliant := metav1.Condition{Type: securityv1alpha1.ConditionCompliant, Status: metav1.ConditionTrue,
		Reason: securityv1alpha1.ReasonAllCompliant, ObservedGeneration: generation,
		Message: fmt.Sprintf("all %d workloads comply", workloads)}
	if len(nonCompliant) > 0 {
		first := nonCompliant[0]
		compliant.Status, compliant.Reason = metav1.ConditionFalse, securityv1alpha1.ReasonNonCompliant
		compliant.Message = fmt.Sprintf("%d of %d workloads do not comply; first: %s %s/%s: %s",
			len(nonCompliant), workloads, first.Kind, first.Namespace, first.Name, strings.Join(first.Reasons, "; "))
	}
	meta.SetStatusCondition(&st.Conditions, compliant)
}

// patchStatus writes the policy's status when it changed, and returns cause.
func (r *PolicyReconciler) patchStatus(ctx context.Context, obj client.Object, base, st *securityv1alpha1.ImagePolicyStatus, cause error) error {
	if equality.Semantic.DeepEqual(base, st) {
		return cause
	}
	var orig client.Object
	switch p := obj.(type) {
	case *securityv1alpha1.ImagePolicy:
		c := p.DeepCopy()
		c.Status = *base
		orig = c
	case *securityv1alpha1.ClusterImagePolicy:
		c := p.DeepCopy()
		c.Status = *base
		orig = c
	}
	if err := r.Client.Status().Patch(ctx, obj, client.MergeFrom(orig)); err != nil {
		return err
	}
	return cause
}

func (r *PolicyReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager watches the policy kind, and re-evaluates the policies of a namespace (and all
// cluster policies) when a workload or a report there changes.
func (r *PolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	toPolicies := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
		var reqs []reconcile.Request
		if r.ClusterScoped {
			list := &securityv1alpha1.ClusterImagePolicyList{}
			if err := r.Client.List(ctx, list); err != nil {
				return nil
			}
			for _, p := range list.Items {
				reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: p.Name}})
			}
			return reqs
		}
		list := &securityv1alpha1.ImagePolicyList{}
		if err := r.Client.List(ctx, list, client.InNamespace(obj.GetNamespace())); err != nil {
			return nil
		}
		for _, p := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}})
		}
		return reqs
	})
	var forObj client.Object = &securityv1alpha1.ImagePolicy{}
	name := "imagepolicy"
	if r.ClusterScoped {
		forObj, name = &securityv1alpha1.ClusterImagePolicy{}, "clusterimagepolicy"
	}
	b := ctrl.NewControllerManagedBy(mgr).Named(name).For(forObj)
	for _, obj := range []client.Object{
		&appsv1.Deployment{}, &appsv1.StatefulSet{}, &appsv1.DaemonSet{}, &appsv1.ReplicaSet{},
		&batchv1.Job{}, &batchv1.CronJob{}, &corev1.Pod{}, &securityv1alpha1.ImageScanReport{},
	} {
		b = b.Watches(obj, toPolicies)
	}
	if r.ClusterScoped {
		b = b.Watches(&corev1.Namespace{}, toPolicies)
	}
	return b.Complete(r)
}
