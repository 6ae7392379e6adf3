// Package argocd tests the Argo CD health check shipped in charts/imageguard/argocd.
package argocd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"

	"github.com/imageguard/imageguard/internal/testenv"
)

// health runs the script on obj the way Argo CD does: obj as a global table, the script's
// returned table read for status and message.
func health(t *testing.T, script string, manifest string) (string, string) {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(manifest), &obj); err != nil {
		t.Fatal(err)
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		t.Fatalf("the health script failed: %v", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("the health script returned %v, not a table", L.Get(-1))
	}
	return ret.RawGetString("status").String(), ret.RawGetString("message").String()
}

// toLua converts decoded JSON to Lua values, numbers as Lua numbers, as Argo CD's conversion does.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, val := range v {
			t.RawSetString(k, toLua(L, val))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, val := range v {
			t.Append(toLua(L, val))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case json.Number:
		f, _ := v.Float64()
		return lua.LNumber(f)
	case nil:
		return lua.LNil
	}
	return lua.LNil
}

func TestHealthCheck(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "charts", "imageguard", "argocd", "health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	script := string(raw)
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
