package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/workload"
)

// maxNonCompliant bounds status.nonCompliant; the summary has the exact count.
const maxNonCompliant = 100

// PolicyReconciler judges every workload a policy matches and writes the verdict to the policy's
// status, as Events on workloads that change verdict, and as the imageguard_workload_compliant
// gauge. It serves ImagePolicy (namespaced) and ClusterImagePolicy (ClusterScoped true).
type PolicyReconciler struct {
	Client        client.Client
	Gatherer      *workload.Gatherer
	Recorder      recorder.EventRecorder
	ClusterScoped bool
	Clock         clock.PassiveClock
	// Timeout bounds one reconcile; 0 means none.
	Timeout time.Duration
	// AdmissionPolicies keeps the ValidatingAdmissionPolicy generated from each policy; nil keeps none.
	AdmissionPolicies *AdmissionPolicies

	mu sync.Mutex
	// verdicts holds, per policy Ref, each matched workload's last verdict (true: compliant), for
	// transition Events and to drop the gauge of workloads no longer matched.
	verdicts map[string]map[string]bool
}

// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagepolicies;clusterimagepolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=security.imageguard.dev,resources=imagepolicies/status;clusterimagepolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets;replicasets,verbs=get;list;watch
// +kubebuilder:rbac:groups=batch,resources=jobs;cronjobs,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods;namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile evaluates one policy over the workloads it matches.
func (r *PolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	obj, st, err := r.get(ctx, req)
	if err != nil {
		return ctrl.Result{}, err
	}
	if obj == nil {
		r.forget(r.ref(req))
		return ctrl.Result{}, r.AdmissionPolicies.Remove(ctx, r.ref(req))
	}
	before := obj.DeepCopyObject().(statusObject)
	compiled := r.Gatherer.Compile(obj)
	if !obj.GetDeletionTimestamp().IsZero() {
		// Until it is gone (a finalizer may hold it, and its spec may still change), the webhook
		// enforces it as it reads: so do the objects generated from it.
		vapErr := r.AdmissionPolicies.ensure(ctx, obj, compiled.Ref, compiled.Err)
		if _, err := writeStatus(ctx, r.Client, before, obj); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, vapErr
	}
	if compiled.Err != nil {
		setPolicyInvalid(obj, compiled.Err)
		vapErr := r.AdmissionPolicies.ensure(ctx, obj, compiled.Ref, compiled.Err)
		if _, err := writeStatus(ctx, r.Client, before, obj); err != nil {
			return ctrl.Result{}, err
		}
		r.record(compiled.Ref, obj, nil, nil)
		if vapErr != nil {
			return ctrl.Result{}, vapErr
		}
		return ctrl.Result{}, reconcile.TerminalError(compiled.Err)
	}
	// Before the workloads are judged: what Kubernetes enforces by itself comes first.
	vapErr := r.AdmissionPolicies.ensure(ctx, obj, compiled.Ref, nil)
	workloads, err := r.Gatherer.Matched(ctx, compiled)
	if err != nil {
		return ctrl.Result{}, err
	}
	now := r.Clock.Now()
	var nonCompliant []securityv1alpha1.NonCompliantWorkload
	var next time.Time
	verdicts := make(map[string]policy.Verdict, len(workloads))
	for _, w := range workloads {
		verdict := compiled.Rules.Evaluate(r.Gatherer.Images(ctx, w.Namespace, w.Containers), now)
		verdicts[w.Key()] = verdict
		if !verdict.NextChange.IsZero() && (next.IsZero() || verdict.NextChange.Before(next)) {
			next = verdict.NextChange
		}
		if !verdict.Compliant() {
			reasons := verdict.Reasons()
			if len(reasons) > 16 {
				reasons = reasons[:16]
			}
			nonCompliant = append(nonCompliant, securityv1alpha1.NonCompliantWorkload{
				Namespace: w.Namespace, Kind: w.Kind, Name: w.Name, Reason: verdict.FirstFailure().Reason, Reasons: reasons,
			})
		}
	}
	setPolicyStatus(obj, st, len(workloads), nonCompliant)
	if _, err := writeStatus(ctx, r.Client, before, obj); err != nil {
		return ctrl.Result{}, err
	}
	r.record(compiled.Ref, obj, workloads, verdicts)
	if vapErr != nil {
		return ctrl.Result{}, vapErr
	}
	result := ctrl.Result{}
	if !next.IsZero() {
		// The verdict changes by itself then (an exception expires, a scan gets too old).
		result.RequeueAfter = next.Sub(now) + time.Second
	}
	return result, nil
}

// get reads the policy of req and its status; nil when it is gone.
func (r *PolicyReconciler) get(ctx context.Context, req ctrl.Request) (statusObject, *securityv1alpha1.ImagePolicyStatus, error) {
	if r.ClusterScoped {
		p := &securityv1alpha1.ClusterImagePolicy{}
		if err := r.Client.Get(ctx, req.NamespacedName, p); err != nil {
			return nil, nil, client.IgnoreNotFound(err)
		}
		return p, &p.Status, nil
	}
	p := &securityv1alpha1.ImagePolicy{}
	if err := r.Client.Get(ctx, req.NamespacedName, p); err != nil {
		return nil, nil, client.IgnoreNotFound(err)
	}
	return p, &p.Status, nil
}

// ref is the Ref of the policy of req (workload.Policy.Ref).
func (r *PolicyReconciler) ref(req ctrl.Request) string {
	if r.ClusterScoped {
		return "ClusterImagePolicy/" + req.Name
	}
	return "ImagePolicy/" + req.Namespace + "/" + req.Name
}

// record keeps the verdicts of the workloads a policy matches: the compliance gauge of each, an
// Event on each workload whose verdict changed, and the gauge of every workload no longer
// matched (deleted, or changed) dropped. nil workloads drop them all. Events name the policy
// object as related.
func (r *PolicyReconciler) record(ref string, related client.Object, workloads []workload.Workload, verdicts map[string]policy.Verdict) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.verdicts == nil {
		r.verdicts = map[string]map[string]bool{}
	}
	prev := r.verdicts[ref]
	current := make(map[string]bool, len(workloads))
	for _, w := range workloads {
		v := verdicts[w.Key()]
		compliant := v.Compliant()
		current[w.Key()] = compliant
		value := 0.0
		if compliant {
			value = 1
		}
		metrics.WorkloadCompliant.With(compliantLabels(ref, w.Namespace, w.Kind, w.Name)).Set(value)
		was, seen := prev[w.Key()]
		if (seen && was == compliant) || (!seen && compliant) {
			continue
		}
		r.event(ref, related, w, v)
	}
	for key := range prev {
		if _, ok := current[key]; !ok {
			ns, kind, name := splitKey(key)
			metrics.WorkloadCompliant.Delete(compliantLabels(ref, ns, kind, name))
		}
	}
	if len(current) == 0 {
		delete(r.verdicts, ref)
		return
	}
	r.verdicts[ref] = current
}

// forget drops what is kept of a deleted policy: its verdicts, its gauges and its compiled form.
func (r *PolicyReconciler) forget(ref string) {
	r.record(ref, nil, nil, nil)
	r.Gatherer.Forget(ref)
}

func compliantLabels(ref, namespace, kind, name string) prometheus.Labels {
	return prometheus.Labels{"policy": ref, "namespace": namespace, "kind": kind, "name": name}
}

// splitKey splits a workload.Workload Key into namespace, kind and name.
func splitKey(key string) (string, string, string) {
	parts := strings.SplitN(key, "/", 3)
	return parts[0], parts[1], parts[2]
}

// event tells a workload it now complies with the policy, or breaks it.
func (r *PolicyReconciler) event(ref string, related client.Object, w workload.Workload, v policy.Verdict) {
	if r.Recorder == nil {
		return
	}
	if v.Compliant() {
		r.Recorder.Eventf(w.Object, related, corev1.EventTypeNormal, securityv1alpha1.ReasonAllCompliant, "Evaluate",
			"%s complies with %s", w.Kind, ref)
		return
	}
	first := v.FirstFailure()
	r.Recorder.Eventf(w.Object, related, corev1.EventTypeWarning, securityv1alpha1.ReasonNonCompliant, "Evaluate",
		"%s breaks %s: %s: %s (%s)", w.Kind, ref, first.Rule, first.Message, first.Image)
}

// setPolicyInvalid says the policy can never be evaluated as written: Stalled, not Ready.
func setPolicyInvalid(obj statusObject, err error) {
	msg := "the policy can never be evaluated: " + err.Error()
	setCondition(obj, securityv1alpha1.ConditionReady, metav1.ConditionFalse, securityv1alpha1.ReasonInvalidPolicy, msg)
	setCondition(obj, securityv1alpha1.ConditionCompliant, metav1.ConditionFalse, securityv1alpha1.ReasonInvalidPolicy, msg)
	setCondition(obj, securityv1alpha1.ConditionStalled, metav1.ConditionTrue, securityv1alpha1.ReasonInvalidPolicy, msg)
}

// setPolicyStatus writes the verdict: Ready (evaluated) and Compliant, apart, so that findings
// never read as a failed object in GitOps tools.
func setPolicyStatus(obj statusObject, st *securityv1alpha1.ImagePolicyStatus, workloads int, nonCompliant []securityv1alpha1.NonCompliantWorkload) {
	st.Summary = &securityv1alpha1.PolicySummary{
		Workloads: int32(workloads), NonCompliant: int32(len(nonCompliant)), Compliant: int32(workloads - len(nonCompliant)),
	}
	st.NonCompliant = nonCompliant
	if len(st.NonCompliant) > maxNonCompliant {
		st.NonCompliant = st.NonCompliant[:maxNonCompliant]
	}
	removeCondition(obj, securityv1alpha1.ConditionStalled)
	setCondition(obj, securityv1alpha1.ConditionReady, metav1.ConditionTrue, securityv1alpha1.ReasonEvaluated,
		fmt.Sprintf("evaluated %d workloads", workloads))
	if len(nonCompliant) == 0 {
		setCondition(obj, securityv1alpha1.ConditionCompliant, metav1.ConditionTrue, securityv1alpha1.ReasonAllCompliant,
			fmt.Sprintf("all %d workloads comply", workloads))
		return
	}
	first := nonCompliant[0]
	setCondition(obj, securityv1alpha1.ConditionCompliant, metav1.ConditionFalse, securityv1alpha1.ReasonNonCompliant,
		fmt.Sprintf("%d of %d workloads do not comply; first: %s %s/%s: %s",
			len(nonCompliant), workloads, first.Kind, first.Namespace, first.Name, strings.Join(first.Reasons, "; ")))
}

// SetupWithManager watches the policy kind, and re-evaluates the policies of a namespace (and all
// cluster policies) when a workload or a report there changes.
func (r *PolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
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
	b := ctrl.NewControllerManagedBy(mgr).Named(name).For(forObj).
		WithOptions(controller.Options{ReconciliationTimeout: r.Timeout})
	b = r.AdmissionPolicies.watch(b, r.ClusterScoped)
	for _, obj := range append(workload.Objects(), &securityv1alpha1.ImageScanReport{}) {
		b = b.Watches(obj, toPolicies)
	}
	// The DB object changes what freshness reads when a re-match ends or the DB turns stale.
	b = b.Watches(&securityv1alpha1.VulnerabilityDatabase{}, toPolicies, builder.WithPredicates(freshnessChanged()))
	if r.ClusterScoped {
		b = b.Watches(&corev1.Namespace{}, toPolicies)
	}
	return b.Complete(r)
}
