package v1alpha1_test

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fromYAML turns a manifest into an object the client sends as written, so that tests can send
// what typed Go structs could not hold (a malformed date, an unknown enum value).
func fromYAML(t *testing.T, manifest string) *unstructured.Unstructured {
	t.Helper()
	obj := map[string]any{}
	if err := yaml.Unmarshal([]byte(manifest), &obj); err != nil {
		t.Fatalf("bad test manifest: %v", err)
	}
	return &unstructured.Unstructured{Object: obj}
}

const validPolicy = `
apiVersion: security.imageguard.dev/v1alpha1
kind: ImagePolicy
metadata: {name: every-field, namespace: default}
spec:
  match:
    images: ["registry.example.com/*"]
    selector: {matchLabels: {app: web}}
  enforcement: Enforce
  rules:
    registries: {allowed: ["registry.example.com/*", "*.dkr.ecr.eu-west-1.amazonaws.com/team/*"]}
    tags: {disallowLatest: true, requireDigest: true}
    vulnerabilities: {maxCritical: 0, maxHigh: 5, maxMedium: 20, maxLow: 100, fixableOnly: true, maxScanAge: 24h}
    exceptions:
    - id: CVE-2024-1234
      images: ["registry.example.com/team/app"]
      expires: "2027-01-01T00:00:00Z"
      reason: not reachable in our configuration
    signatures:
      required: true
      keys:
      - publicKey: |
          -----BEGIN PUBLIC KEY-----
          MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
          -----END PUBLIC KEY-----
      - secretRef: {name: cosign-keys}
    onUnscanned: Deny
`

func TestValidObjectsAreAccepted(t *testing.T) {
	tests := map[string]string{
		"a policy with every field": validPolicy,
		"a minimal policy": `
apiVersion: security.imageguard.dev/v1alpha1
kind: ImagePolicy
metadata: {name: minimal, namespace: default}
spec:
  rules: {}
`,
		"a cluster policy with a namespace selector": `
apiVersion: security.imageguard.dev/v1alpha1
kind: ClusterImagePolicy
metadata: {name: no-critical}
spec:
  match:
    namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}
    images: ["*"]
  enforcement: Warn
  rules:
    vulnerabilities: {maxCritical: 0, fixableOnly: true}
`,
		"a scan report": `
apiVersion: security.imageguard.dev/v1alpha1
kind: ImageScanReport
metadata: {name: app-0123456789ab, namespace: default}
spec:
  image: registry.example.com:5000/team/app
  digest: ` + testDigest + `
  tags: ["1.2.3", "latest"]
`,
	}
	for name, manifest := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			obj := fromYAML(t, manifest)
			g.Expect(env.Client.Create(context.Background(), obj)).To(Succeed())
		})
	}
}

func TestPolicyDefaults(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	policy := &securityv1alpha1.ImagePolicy{}
	policy.Name, policy.Namespace = "defaults", "default"
	g.Expect(env.Client.Create(ctx, policy)).To(Succeed())
	g.Expect(policy.Spec.Enforcement).To(Equal(securityv1alpha1.EnforcementAudit))
	g.Expect(policy.Spec.Rules.OnUnscanned).To(Equal(securityv1alpha1.UnscannedAllow))
}

func TestInvalidObjectsAreRejected(t *testing.T) {
	policy := func(name, spec string) string {
		return "apiVersion: security.imageguard.dev/v1alpha1\nkind: ImagePolicy\n" +
			"metadata: {name: " + name + ", namespace: default}\nspec:\n" + spec
	}
	tests := map[string]struct {
		manifest string
		// wants are substrings of the API server's message: the field path and what is wrong.
		wants []string
	}{
		"an exception expiry that is not RFC 3339": {
			manifest: policy("bad-date", `
  rules:
    exceptions: [{id: CVE-2024-1, expires: "next tuesday", reason: r}]`),
			wants: []string{"spec.rules.exceptions[0].expires", "date-time"},
		},
		"a date without a time zone": {
			manifest: policy("bad-date-zone", `
  rules:
    exceptions: [{id: CVE-2024-1, expires: "2027-01-01 10:00", reason: r}]`),
			wants: []string{"spec.rules.exceptions[0].expires"},
		},
		"a negative threshold": {
			manifest: policy("negative", `
  rules:
    vulnerabilities: {maxCritical: -1}`),
			wants: []string{"spec.rules.vulnerabilities.maxCritical", "greater than or equal to 0"},
		},
		"an unknown enforcement mode": {
			manifest: policy("bad-mode", `
  enforcement: Block
  rules: {}`),
			wants: []string{"spec.enforcement", `Unsupported value: "Block"`},
		},
		"an exception without an id": {
			manifest: policy("no-id", `
  rules:
    exceptions: [{expires: "2027-01-01T00:00:00Z", reason: r}]`),
			wants: []string{"spec.rules.exceptions[0].id", "Required value"},
		},
		"an exception without a reason": {
			manifest: policy("no-reason", `
  rules:
    exceptions: [{id: CVE-2024-1, expires: "2027-01-01T00:00:00Z"}]`),
			wants: []string{"spec.rules.exceptions[0].reason", "Required value"},
		},
		"an unknown onUnscanned action": {
			manifest: policy("bad-unscanned", `
  rules: {onUnscanned: Maybe}`),
			wants: []string{"spec.rules.onUnscanned", "Unsupported value"},
		},
		"a scan age that is not a duration": {
			manifest: policy("bad-age", `
  rules:
    vulnerabilities: {maxScanAge: "one day"}`),
			wants: []string{"spec.rules.vulnerabilities.maxScanAge"},
		},
		"an empty list of allowed registries": {
			manifest: policy("no-registries", `
  rules:
    registries: {allowed: []}`),
			wants: []string{"spec.rules.registries.allowed", "at least 1"},
		},
		"a key with both an inline key and a secret": {
			manifest: policy("two-keys", `
  rules:
    signatures:
      required: true
      keys: [{publicKey: k, secretRef: {name: s}}]`),
			wants: []string{"spec.rules.signatures.keys[0]", "exactly one of publicKey and secretRef"},
		},
		"required signatures without keys": {
			manifest: policy("no-keys", `
  rules:
    signatures: {required: true}`),
			wants: []string{"spec.rules.signatures", "must name at least one key"},
		},
		"a cluster policy with a negative threshold": {
			manifest: `
apiVersion: security.imageguard.dev/v1alpha1
kind: ClusterImagePolicy
metadata: {name: negative}
spec:
  rules:
    vulnerabilities: {maxHigh: -3}`,
			wants: []string{"spec.rules.vulnerabilities.maxHigh"},
		},
		"a report with a malformed digest": {
			manifest: `
apiVersion: security.imageguard.dev/v1alpha1
kind: ImageScanReport
metadata: {name: bad-digest, namespace: default}
spec: {image: registry.example.com/app, digest: "sha256:xyz"}`,
			wants: []string{"spec.digest"},
		},
		"a report whose image has a tag": {
			manifest: `
apiVersion: security.imageguard.dev/v1alpha1
kind: ImageScanReport
metadata: {name: bad-image, namespace: default}
spec: {image: "registry.example.com/app:1.0@sha256", digest: ` + testDigest + `}`,
			wants: []string{"spec.image"},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			err := env.Client.Create(context.Background(), fromYAML(t, tt.manifest))
			g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want an Invalid error, got %v", err)
			for _, want := range tt.wants {
				g.Expect(err.Error()).To(ContainSubstring(want))
			}
		})
	}
}

func TestReportImageAndDigestAreImmutable(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	report := &securityv1alpha1.ImageScanReport{
		Spec: securityv1alpha1.ImageScanReportSpec{Image: "registry.example.com/app", Digest: testDigest},
	}
	report.Name, report.Namespace = "immutable", "default"
	g.Expect(env.Client.Create(ctx, report)).To(Succeed())

	changed := report.DeepCopy()
	changed.Spec.Digest = "sha256:" + "f" + testDigest[len("sha256:")+1:]
	err := env.Client.Update(ctx, changed)
	g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
	g.Expect(err.Error()).To(ContainSubstring("spec.digest is immutable"))

	// A report is about one platform's image too: the platform can be neither set nor changed.
	for _, platform := range []string{"linux/arm64", ""} {
		changed = report.DeepCopy()
		changed.Spec.Platform = platform
		if platform == "" {
			changed = report.DeepCopy()
			changed.Name = "immutable-arm64"
			changed.ResourceVersion = ""
			changed.Spec.Platform = "linux/arm64"
			g.Expect(env.Client.Create(ctx, changed)).To(Succeed())
			changed.Spec.Platform = ""
		}
		err = env.Client.Update(ctx, changed)
		g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "platform %q: got %v", platform, err)
		g.Expect(err.Error()).To(ContainSubstring("spec.platform is immutable"))
	}
	bad := report.DeepCopy()
	bad.Name, bad.ResourceVersion, bad.Spec.Platform = "bad-platform", "", "linux"
	err = env.Client.Create(ctx, bad)
	g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)

	// Tags may change: pods start using a digest under a new tag.
	report.Spec.Tags = []string{"v2"}
	g.Expect(env.Client.Update(ctx, report)).To(Succeed())
}
