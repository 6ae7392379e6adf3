package admission

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/scheme"
	"github.com/imageguard/imageguard/internal/workload"
)

func deploymentRaw(t *testing.T, images ...string) []byte {
	d := &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}}
	for _, img := range images {
		d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: "app", Image: img})
	}
	raw, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func admissionReview(op admissionv1.Operation, obj, old []byte, dryRun bool) string {
	r := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "1", Kind: metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"},
			Resource:  metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"},
			Namespace: "shop", Operation: op, Object: runtime.RawExtension{Raw: obj}, OldObject: runtime.RawExtension{Raw: old},
			DryRun: ptr.To(dryRun),
		},
	}
	raw, _ := json.Marshal(r)
	return string(raw)
}

func TestWorkloadValidator(t *testing.T) {
	trusted := securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{"registry.example.com/**"}}}
	queued := &queue{}
	reviewer := &Reviewer{
		State: state{policies: []*workload.Policy{compiled(t, "ClusterImagePolicy/trusted", securityv1alpha1.EnforcementEnforce, securityv1alpha1.UnscannedAllow, trusted)}},
		Clock: clocktesting.NewFakePassiveClock(now), Queue: queued,
	}
	h := &webhook.Admission{Handler: NewWorkloadValidator(reviewer, scheme.New())}
	good, evil := deploymentRaw(t, "registry.example.com/app:1"), deploymentRaw(t, "evil.io/app:1")
	// The same images, moved to arm64 nodes: another image of an index may run there.
	var moved appsv1.Deployment
	if err := json.Unmarshal(evil, &moved); err != nil {
		t.Fatal(err)
	}
	moved.Spec.Template.Spec.NodeSelector = map[string]string{corev1.LabelArchStable: "arm64"}
	evilOnArm, err := json.Marshal(&moved)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		body        string
		wantCode    int32
		wantAllowed bool
		wantText    string
	}{
		"a trusted image":                            {body: admissionReview(admissionv1.Create, good, nil, false), wantCode: 200, wantAllowed: true},
		"an untrusted image":                         {body: admissionReview(admissionv1.Create, evil, nil, false), wantCode: 403, wantText: "evil.io/app:1: registries"},
		"an update leaving the images as are":        {body: admissionReview(admissionv1.Update, evil, evil, false), wantCode: 200, wantAllowed: true, wantText: "images unchanged"},
		"an update changing an image":                {body: admissionReview(admissionv1.Update, evil, good, false), wantCode: 403, wantText: "registries"},
		"an update moving the images to other nodes": {body: admissionReview(admissionv1.Update, evilOnArm, evil, false), wantCode: 403, wantText: "registries"},
		"a dry run":                          {body: admissionReview(admissionv1.Create, good, nil, true), wantCode: 200, wantAllowed: true},
		"an object that is not a Deployment": {body: admissionReview(admissionv1.Create, []byte(`{"spec": 7}`), nil, false), wantCode: 400, wantText: "decoding the Deployment"},
		"malformed JSON":                     {body: `{"request": `, wantCode: 400, wantText: "unexpected end of JSON input"},
		"the wrong kind":                     {body: imageReview("shop", "evil.io/app:1"), wantCode: 400, wantText: "not an admission.k8s.io/v1 AdmissionReview"},
		"an oversized body":                  {body: `{"x":"` + strings.Repeat("a", 8<<20) + `"}`, wantCode: 413, wantText: "too large"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, ValidatePath, strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			h.ServeHTTP(rec, req)
			g.Expect(rec.Code).To(Equal(http.StatusOK), "the API server reads the answer from the review")
			out := admissionv1.AdmissionReview{}
			g.Expect(json.Unmarshal(rec.Body.Bytes(), &out)).To(Succeed())
			g.Expect(out.Response.Allowed).To(Equal(tt.wantAllowed))
			if out.Response.Result != nil {
				g.Expect(out.Response.Result.Code).To(Equal(tt.wantCode))
				g.Expect(out.Response.Result.Message).To(ContainSubstring(tt.wantText))
			} else {
				g.Expect(tt.wantCode).To(Equal(int32(200)))
			}
		})
	}
	// Only admitted requests queue their unscanned images; the dry run and the unchanged update
	// queue nothing.
	NewWithT(t).Expect(queued.images).To(ConsistOf("registry.example.com/app:1"))
}
