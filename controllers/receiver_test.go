package controllers

import (
	"errors"
	"net/http"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

func TestParseNotification(t *testing.T) {
	for _, tt := range []struct {
		name string
		body string
		want []string
		code int
	}{
		{"distribution push", `{"events":[{"action":"push","target":{"repository":"team/app","tag":"1.0"}},{"action":"pull","target":{"repository":"team/other"}}]}`, []string{"team/app"}, 0},
		{"distribution pulls only", `{"events":[{"action":"pull","target":{"repository":"team/app"}}]}`, nil, 0},
		{"harbor push", `{"type":"PUSH_ARTIFACT","event_data":{"repository":{"repo_full_name":"library/app"}}}`, []string{"library/app"}, 0},
		{"harbor delete", `{"type":"DELETE_ARTIFACT","event_data":{"repository":{"repo_full_name":"library/app"}}}`, nil, 0},
		{"harbor push without repository", `{"type":"PUSH_ARTIFACT","event_data":{}}`, nil, http.StatusBadRequest},
		{"event without repository", `{"events":[{"action":"push","target":{}}]}`, nil, http.StatusBadRequest},
		{"not JSON", `{"events":`, nil, http.StatusBadRequest},
		{"an array", `[1]`, nil, http.StatusBadRequest},
		{"neither", `{"hello":"world"}`, nil, http.StatusBadRequest},
		{"events of the wrong type", `{"events":"push"}`, nil, http.StatusBadRequest},
	} {
		got, err := parseNotification([]byte(tt.body))
		var re *receiverError
		switch {
		case tt.code != 0 && (!errors.As(err, &re) || re.code != tt.code):
			t.Errorf("%s: got %v, want HTTP %d", tt.name, err, tt.code)
		case tt.code == 0 && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.code == 0 && len(got) != len(tt.want):
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestCovers(t *testing.T) {
	entries := []string{"registry.example.com/team/app", "registry.example.com/tools/**"}
	for repo, want := range map[string]bool{
		"team/app": true, "team/app2": false, "team": false, "tools/lint": true, "tools/a/b": true, "tools": false, "toolsx/a": false,
	} {
		if got := covers(entries, repo); got != want {
			t.Errorf("covers(%q) = %v, want %v", repo, got, want)
		}
	}
	if !covers([]string{"registry.example.com/**"}, "any/thing") {
		t.Error("a whole-registry prefix covers every repository")
	}
}

func TestScanKey(t *testing.T) {
	for path, ok := range map[string]bool{
		"/hooks/registry/team/scan": true, "/hooks/registry/team/scan.v1": true, "/hooks/registry/team": false,
		"/hooks/registry/team/scan/extra": false, "/hooks/registry/../secret/x": false, "/hooks/registry/Team/scan": false,
		"/hooks/registry//scan": false,
	} {
		if _, got := scanKey(path); got != ok {
			t.Errorf("scanKey(%q) = %v, want %v", path, got, ok)
		}
	}
}

func TestCompileScanRefusesBadSpecs(t *testing.T) {
	good := securityv1alpha1.RegistryScanSpec{Repositories: []string{"registry.example.com/team/app", "localhost:5000/xy/**", "registry.example.com/**"}}
	if _, err := compileScan(good); err != nil {
		t.Fatal(err)
	}
	for name, spec := range map[string]securityv1alpha1.RegistryScanSpec{
		"no host":        {Repositories: []string{"team/app"}},
		"host only":      {Repositories: []string{"registry.example.com"}},
		"bad pattern":    {Repositories: []string{"r.example.com/ab"}, Tags: &securityv1alpha1.TagFilter{Pattern: "("}},
		"bad semver":     {Repositories: []string{"r.example.com/ab"}, Tags: &securityv1alpha1.TagFilter{Semver: "not a range"}},
		"escaping group": {Repositories: []string{"r.example.com/ab"}, Tags: &securityv1alpha1.TagFilter{Exclude: []string{"x)|(.*"}}},
	} {
		if _, err := compileScan(spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestScanCovers(t *testing.T) {
	scan := &securityv1alpha1.RegistryScan{Spec: securityv1alpha1.RegistryScanSpec{Repositories: []string{"127.0.0.1:5000/team/app", "127.0.0.1:5000/tools/**"}}}
	for repo, want := range map[string]bool{
		"127.0.0.1:5000/team/app": true, "127.0.0.1:5000/team/app2": false, "127.0.0.1:5000/tools/x": true, "127.0.0.1:5001/tools/x": false,
	} {
		if got := scanCovers(scan, repo); got != want {
			t.Errorf("scanCovers(%q) = %v, want %v", repo, got, want)
		}
	}
}

func TestScanCoversDockerHub(t *testing.T) {
	scan := &securityv1alpha1.RegistryScan{Spec: securityv1alpha1.RegistryScanSpec{Repositories: []string{"index.docker.io/library/nginx", "Registry.Example.com:443/team/**"}}}
	for repo, want := range map[string]bool{
		"docker.io/library/nginx": true, "registry.example.com/team/app": true, "docker.io/library/redis": false,
	} {
		if got := scanCovers(scan, repo); got != want {
			t.Errorf("scanCovers(%q) = %v, want %v", repo, got, want)
		}
	}
}

func TestReceiverPacesEachPath(t *testing.T) {
	rr := &RegistryReceiver{}
	rr.init()
	a, b := types.NamespacedName{Namespace: "ns", Name: "a"}, types.NamespacedName{Namespace: "ns", Name: "b"}
	allowed := 0
	for range 50 {
		if rr.allow(a) {
			allowed++
		}
	}
	// The burst, and what refilled while the loop ran (5 a second).
	if allowed < 2*receiverRequestsPerSecond || allowed > 2*receiverRequestsPerSecond+5 {
		t.Errorf("%d of 50 requests allowed at once to one path", allowed)
	}
	if !rr.allow(b) {
		t.Error("a flood of one path held another's")
	}
}
