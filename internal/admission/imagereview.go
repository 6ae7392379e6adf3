package admission

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	imagepolicyv1alpha1 "k8s.io/api/imagepolicy/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/imageguard/imageguard/internal/workload"
)

// ImagePolicyPath is where the manager's webhook server serves ImageReviewHandler.
const ImagePolicyPath = "/imagepolicy"

// MaxRequestBytes bounds a review request body (an ImageReview names images and annotations
// only: thousands of containers fit).
const MaxRequestBytes = 4 << 20

// ImageReviewHandler serves Kubernetes' ImagePolicyWebhook backend protocol: it answers an
// ImageReview (imagepolicy.k8s.io/v1alpha1) with status.allowed, reason and audit annotations.
// A malformed request gets a 4xx with a clear message, never a panic; the API server's
// defaultAllow then decides.
type ImageReviewHandler struct {
	Reviewer *Reviewer
}

func (h *ImageReviewHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		httpError(w, http.StatusMethodNotAllowed, "use POST with an ImageReview")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBytes+1))
	if err != nil {
		httpError(w, http.StatusBadRequest, "reading the request: "+err.Error())
		return
	}
	if len(body) > MaxRequestBytes {
		// An answer the plugin reads, refusing: its defaultAllow must not decide what ImageGuard
		// could not read.
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(imagepolicyv1alpha1.ImageReview{
			TypeMeta: metav1.TypeMeta{APIVersion: imagepolicyv1alpha1.SchemeGroupVersion.String(), Kind: "ImageReview"},
			Status: imagepolicyv1alpha1.ImageReviewStatus{Reason: fmt.Sprintf(
				"denied by ImageGuard: the request is larger than the %d bytes it reads", MaxRequestBytes)},
		})
		return
	}
	review := &imagepolicyv1alpha1.ImageReview{}
	if err := json.Unmarshal(body, review); err != nil {
		httpError(w, http.StatusBadRequest, "the request is not a JSON ImageReview: "+err.Error())
		return
	}
	if review.APIVersion != imagepolicyv1alpha1.SchemeGroupVersion.String() || review.Kind != "ImageReview" {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("expected an imagepolicy.k8s.io/v1alpha1 ImageReview, got %s %s", review.APIVersion, review.Kind))
		return
	}
	containers := make([]workload.Container, 0, len(review.Spec.Containers))
	for i, c := range review.Spec.Containers {
		containers = append(containers, workload.Container{Name: fmt.Sprintf("container-%d", i), Image: c.Image, Type: workload.RegularContainer})
	}
	// The ImageReview carries no labels, no user and no owner: label selectors of policies see an
	// unlabelled workload, and a pod made by a controller is judged like any other.
	// Nor does it say whether the request is a dry run, or whether the pod will be created at all:
	// only the reports of a scanned digest's other platforms are queued from here (the validating
	// webhook and the pod controller start the other scans).
	decision, err := h.Reviewer.Review(r.Context(), Request{
		Endpoint: EndpointImagePolicy, Namespace: review.Spec.Namespace, Labels: map[string]string{}, Containers: containers, DryRun: true,
	})
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	review.Status = imagepolicyv1alpha1.ImageReviewStatus{Allowed: decision.Allowed, Reason: decision.Message}
	if len(decision.Audit) > 0 {
		// Keys are prefix-less: the API server prefixes them with the plugin's name.
		review.Status.AuditAnnotations = auditAnnotations(decision.Audit)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(review)
}

// auditAnnotations turns per-policy results into audit annotations, one per policy. Keys are
// prefix-less, as both webhook protocols ask: the API server prefixes them itself.
func auditAnnotations(audit map[string]string) map[string]string {
	out := make(map[string]string, len(audit))
	for p, result := range audit {
		out[auditKey(p)] = result
	}
	return out
}

// auditKey turns a policy name into an annotation key part.
func auditKey(policy string) string {
	out := make([]rune, 0, len(policy))
	for _, r := range policy {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
			out = append(out, r)
		default:
			out = append(out, '.')
		}
	}
	return string(out)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
