package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/imageguard/imageguard/internal/workload"
)

// ValidatePath is where the manager's webhook server serves WorkloadValidator.
const ValidatePath = "/validate-workloads"

// The webhook configuration generated from these markers (config/webhook/manifests.yaml) is the
// reference the Helm chart's template is checked against.
// +kubebuilder:webhook:path=/validate-workloads,mutating=false,failurePolicy=fail,sideEffects=NoneOnDryRun,groups="",resources=pods;pods/ephemeralcontainers,verbs=create;update,versions=v1,name=pods.imageguard.dev,admissionReviewVersions=v1,timeoutSeconds=5,matchPolicy=Equivalent
// +kubebuilder:webhook:path=/validate-workloads,mutating=false,failurePolicy=fail,sideEffects=NoneOnDryRun,groups=apps,resources=deployments;statefulsets;daemonsets;replicasets,verbs=create;update,versions=v1,name=apps.imageguard.dev,admissionReviewVersions=v1,timeoutSeconds=5,matchPolicy=Equivalent
// +kubebuilder:webhook:path=/validate-workloads,mutating=false,failurePolicy=fail,sideEffects=NoneOnDryRun,groups=batch,resources=jobs;cronjobs,verbs=create;update,versions=v1,name=batch.imageguard.dev,admissionReviewVersions=v1,timeoutSeconds=5,matchPolicy=Equivalent

// WorkloadValidator is the validating webhook of Pods (and their ephemeral containers) and of the
// pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs. An
// update that leaves the images as they were is admitted without a decision, so a new CVE never
// blocks scaling or relabelling a running workload: the policy status reports it instead.
type WorkloadValidator struct {
	Reviewer *Reviewer
	Decoder  admission.Decoder
}

// NewWorkloadValidator returns the validator, decoding objects with scheme.
func NewWorkloadValidator(reviewer *Reviewer, scheme *runtime.Scheme) *WorkloadValidator {
	return &WorkloadValidator{Reviewer: reviewer, Decoder: admission.NewDecoder(scheme)}
}

// Handle answers one AdmissionReview.
func (v *WorkloadValidator) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.UID == "" || req.Kind.Kind == "" {
		return admission.Errored(http.StatusBadRequest, errors.New("not an admission.k8s.io/v1 AdmissionReview request"))
	}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("")
	}
	kind, obj, err := v.decode(req.Kind, req.Object)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if obj == nil {
		return admission.Allowed("not a workload ImageGuard checks")
	}
	spec := kind.PodSpec(obj)
	containers := workload.Containers(spec)
	var only []string
	if req.Operation == admissionv1.Update && len(req.OldObject.Raw) > 0 {
		// Unchanged images are not judged again, but by the policies new labels bring the
		// workload under: a policy that applied before judged (or chose not to refuse) them.
		if _, old, err := v.decode(req.Kind, req.OldObject); err == nil && old != nil && slices.Equal(workload.Containers(kind.PodSpec(old)), containers) &&
			samePlacement(kind.PodSpec(old), spec) {
			added, all := v.Reviewer.policiesAdded(ctx, req.Namespace, [2][]map[string]string{{old.GetLabels(), kind.PodLabels(old)}, {obj.GetLabels(), kind.PodLabels(obj)}})
			if !all && len(added) == 0 {
				return admission.Allowed("images unchanged")
			}
			only = added // nil when all: every policy judges
		}
	}
	d, err := v.Reviewer.Review(ctx, Request{
		Endpoint: EndpointValidate, Namespace: req.Namespace, Labels: obj.GetLabels(), PodLabels: kind.PodLabels(obj), Containers: containers,
		PodSpec: spec, User: req.UserInfo.Username, Object: obj,
		ObjectKind: schema.GroupKind{Group: req.Kind.Group, Kind: req.Kind.Kind}, DryRun: req.DryRun != nil && *req.DryRun,
		OnlyPolicies: only,
	})
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	resp := admission.Allowed("")
	if !d.Allowed {
		resp = admission.Denied(d.Message)
	}
	resp = resp.WithWarnings(d.Warnings...)
	if len(d.Audit) > 0 {
		resp.AuditAnnotations = auditAnnotations(d.Audit)
	}
	return resp
}

// samePlacement reports whether two pod specs may land on the same nodes, as far as the platforms
// their images are judged on go: node selector, required node affinity and node name. A change of
// them changes which of an index's images run, so it is judged again.
func samePlacement(a, b *corev1.PodSpec) bool {
	if a == nil || b == nil {
		return a == b
	}
	nodeAffinity := func(s *corev1.PodSpec) *corev1.NodeAffinity {
		if s.Affinity == nil {
			return nil
		}
		return s.Affinity.NodeAffinity
	}
	return a.NodeName == b.NodeName && equality.Semantic.DeepEqual(a.NodeSelector, b.NodeSelector) &&
		equality.Semantic.DeepEqual(nodeAffinity(a), nodeAffinity(b))
}

// decode decodes obj of kind and returns its kind of the table and the object; nil for a kind it
// does not check.
func (v *WorkloadValidator) decode(kind metav1.GroupVersionKind, obj runtime.RawExtension) (workload.Kind, client.Object, error) {
	k, ok := workload.KindOf(kind.Group, kind.Kind)
	if !ok {
		return workload.Kind{}, nil, nil
	}
	target := k.New()
	if err := v.Decoder.DecodeRaw(obj, target); err != nil {
		return k, nil, fmt.Errorf("decoding the %s: %w", kind.Kind, err)
	}
	return k, target, nil
}

// MaxReviewBytes is the largest AdmissionReview ImageGuard reads, as controller-runtime's
// admission handler does.
const MaxReviewBytes = 7 << 20

// OversizeGuard serves Next, and answers itself an AdmissionReview too large to read: one the API
// server can make from a legal object (its JSON escapes some bytes six times over). Left to Next,
// its answer would name no request UID, the API server would count the call as failed, and
// failurePolicy: Ignore would admit the object unjudged. Too large, it is refused in a namespace
// where a policy enforces, and admitted with a Warning elsewhere.
type OversizeGuard struct {
	Next     http.Handler
	Reviewer *Reviewer
}

func (g *OversizeGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength >= 0 && r.ContentLength <= MaxReviewBytes {
		g.Next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxReviewBytes+1))
	if err != nil {
		http.Error(w, "reading the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) <= MaxReviewBytes {
		r.Body = io.NopCloser(bytes.NewReader(body))
		g.Next.ServeHTTP(w, r)
		return
	}
	uid, namespace := reviewHead(body)
	resp := admissionv1.AdmissionResponse{UID: types.UID(uid), Allowed: true}
	msg := fmt.Sprintf("the admission request is larger than the %d bytes ImageGuard reads", MaxReviewBytes)
	if g.Reviewer.enforces(r.Context(), namespace) {
		resp.Allowed = false
		resp.Result = &metav1.Status{Code: http.StatusRequestEntityTooLarge, Message: "denied by ImageGuard: " + msg + ", and an image policy enforces in " + namespace}
	} else {
		resp.Warnings = []string{"ImageGuard: " + msg + "; not judged (no image policy enforces in " + namespace + ")"}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: &resp,
	})
}

// reviewHead reads request.uid and request.namespace from the start of an AdmissionReview, where
// the API server writes them, before the object; "" for what it does not find there.
func reviewHead(body []byte) (uid, namespace string) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", ""
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return uid, namespace
		}
		if key != "request" {
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return uid, namespace
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('{') {
			return uid, namespace
		}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return uid, namespace
			}
			switch k {
			case "uid":
				if dec.Decode(&uid) != nil {
					return uid, namespace
				}
			case "namespace":
				if dec.Decode(&namespace) != nil {
					return uid, namespace
				}
			case "object", "oldObject":
				return uid, namespace // the rest is the large part
			default:
				var skip json.RawMessage
				if dec.Decode(&skip) != nil {
					return uid, namespace
				}
			}
		}
		return uid, namespace
	}
	return uid, namespace
}

// ReadDeadline serves next with a deadline on reading the request, headers and body: a caller that
// sends its body slowly (slowloris) holds a connection no longer than d. controller-runtime's
// server bounds the headers only.
func ReadDeadline(next http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
		next.ServeHTTP(w, r)
	})
}
