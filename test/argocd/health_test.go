package argocd

import (
	"testing"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/yaml"
)

// health runs the script on manifest the way Argo CD does.
func health(t *testing.T, script string, manifest string) (string, string) {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(manifest), &obj); err != nil {
		t.Fatal(err)
	}
	status, message, err := Health(script, obj)
	if err != nil {
		t.Fatal(err)
	}
	return status, message
}

func TestHealthCheck(t *testing.T) {
	script, err := Script()
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		manifest    string
		wantStatus  string
		wantMessage string
	}{
		"a ready report": {manifest: `
kind: ImageScanReport
metadata: {generation: 1}
status:
  observedGeneration: 1
  conditions:
  - {type: Scanned, status: "True", reason: ScanSucceeded, message: ok}
  - {type: Ready, status: "True", reason: ScanSucceeded, message: "3 vulnerabilities: 1 critical"}
`, wantStatus: "Healthy", wantMessage: "3 vulnerabilities"},
		"a report whose scan failed": {manifest: `
kind: ImageScanReport
metadata: {generation: 1}
status:
  observedGeneration: 1
  conditions:
  - {type: Ready, status: "False", reason: Unauthorized, message: "the registry refused the credentials"}
`, wantStatus: "Degraded", wantMessage: "Unauthorized"},
		"a report waiting for the DB": {manifest: `
kind: ImageScanReport
metadata: {generation: 1}
status:
  observedGeneration: 1
  conditions:
  - {type: Ready, status: "False", reason: DatabaseUnavailable, message: "no vulnerability DB is loaded yet"}
`, wantStatus: "Progressing", wantMessage: "DatabaseUnavailable"},
		"a report retried after a failed scan": {manifest: `
kind: ImageScanReport
metadata: {generation: 1}
status:
  observedGeneration: 1
  conditions:
  - {type: Ready, status: "False", reason: Unauthorized, message: "the registry refused the credentials"}
  - {type: Reconciling, status: "True", reason: Unauthorized, message: "the scan is retried with backoff"}
`, wantStatus: "Degraded", wantMessage: "Unauthorized"},
		"a report waiting for its first scan": {manifest: `
kind: ImageScanReport
metadata: {generation: 1}
status:
  observedGeneration: 1
  conditions:
  - {type: Ready, status: "False", reason: ScanPending, message: "waiting for the first scan of the image"}
  - {type: Reconciling, status: "True", reason: ScanPending, message: "waiting for the first scan of the image"}
`, wantStatus: "Progressing", wantMessage: "ScanPending"},
		"a new report": {manifest: `
kind: ImageScanReport
metadata: {generation: 1}
`, wantStatus: "Progressing"},
		"a policy with non-compliant workloads": {manifest: `
kind: ImagePolicy
metadata: {generation: 2}
status:
  observedGeneration: 2
  conditions:
  - {type: Ready, status: "True", reason: Evaluated, message: "evaluated 4 workloads"}
  - {type: Compliant, status: "False", reason: NonCompliant, message: "1 of 4 workloads do not comply"}
`, wantStatus: "Healthy"},
		"a policy not yet observed": {manifest: `
kind: ClusterImagePolicy
metadata: {generation: 3}
status:
  observedGeneration: 2
  conditions:
  - {type: Ready, status: "True", reason: Evaluated, message: "evaluated 4 workloads"}
`, wantStatus: "Progressing"},
		"a policy that can never work": {manifest: `
kind: ImagePolicy
metadata: {generation: 1}
status:
  observedGeneration: 1
  conditions:
  - {type: Ready, status: "False", reason: InvalidPolicy, message: "match.selector: bad operator"}
  - {type: Stalled, status: "True", reason: InvalidPolicy, message: "match.selector: bad operator"}
`, wantStatus: "Degraded", wantMessage: "InvalidPolicy"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			status, message := health(t, script, tt.manifest)
			g.Expect(status).To(Equal(tt.wantStatus))
			g.Expect(message).To(ContainSubstring(tt.wantMessage))
		})
	}
}
