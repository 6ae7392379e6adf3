package registry

import "testing"

func TestInsecureHostsWhateverTheSpelling(t *testing.T) {
	c := NewClient(Options{InsecureHosts: []string{"Registry.Local:5000"}})
	for _, ref := range []string{"registry.local:5000/team/app:1", "REGISTRY.LOCAL:5000/team/app:1"} {
		r, err := c.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Context().Scheme(); got != "http" {
			t.Errorf("%s: scheme %s, want http", ref, got)
		}
	}
	r, err := c.ParseReference("registry.local:5001/team/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Context().Scheme(); got != "https" {
		t.Errorf("another port: scheme %s, want https", got)
	}
}
