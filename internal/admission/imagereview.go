package admission

import (
	"encoding/json"

	"fmt"
	"io"
	"net/http"
	"time"

	imagepolicyv1alpha1 "k8s.io/api/imagepolicy/v1alpha1"
)

// MaxRequestBytes bounds a review request body.
const MaxRequestBytes = 1 << 20

// ImageReviewHandler serves Kubernetes' ImagePolicyWebhook backend protocol: it answers an
// ImageReview (imagepolicy.k8s.io/v1alpha1) with status.allowed, reason and audit annotations.
// A malformed request gets a 4xx with a clear message, never a panic; the API server's
// defaultAllow then decides.
type ImageReviewHandler struct {
	State State
	Now   func() time.Time
	// OnUnscanned is called with the images never scanned, so their scan starts at once.
	OnUnscanned func(namespace string, images []string)
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
		httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the request is larger than %d bytes", MaxRequestBytes))
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
	containers := make([]Container, 0, len(review.Spec.Containers))
	for i, c := range review.Spec.Containers {
		containers = append(containers, Container{Name: fmt.Sprintf("container-%d", i), Image: c.Image})
	}
	now := time.Now()
	if h.Now != nil {
		now = h.Now()
	}
	decision, err := Decide(h.State, review.Spec.Namespace, nil, containers, now)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "evaluating the policies: "+err.Error())
		return
	}
	if len(decision.Unscanned) > 0 && h.OnUnscanned != nil {
		h.OnUnscanned(review.Spec.Namespace, decision.Unscanned)
	}
	review.Status = imagepolicyv1alpha1.ImageReviewStatus{Allowed: decision.Allowed, Reason: decision.Message}
	if len(decision.Audit) > 0 {
		review.Status.AuditAnnotations = map[string]string{}
		for p, result := range decision.Audit {
			// The API server prefixes these with the plugin's name.
			review.Status.AuditAnnotations["imageguard.dev/"+auditKey(p)] = result
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(review)
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
