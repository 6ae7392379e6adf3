package imageref

import "testing"

func TestCanonicalRepository(t *testing.T) {
	tests := map[string]struct{ host, path, want string }{
		"as it is":             {"registry.example.com", "team/app", "registry.example.com/team/app"},
		"upper case":           {"REGISTRY.Example.COM", "team/app", "registry.example.com/team/app"},
		"the default port":     {"registry.example.com:443", "app", "registry.example.com/app"},
		"another port stays":   {"registry.example.com:5000", "app", "registry.example.com:5000/app"},
		"docker hub's index":   {"index.docker.io", "library/nginx", "docker.io/library/nginx"},
		"docker hub's v2 host": {"registry-1.docker.io", "nginx", "docker.io/library/nginx"},
		"docker hub's web":     {"Registry.Hub.Docker.com:443", "bitnami/redis", "docker.io/bitnami/redis"},
		"a look-alike":         {"docker.io.evil.io", "nginx", "docker.io.evil.io/nginx"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := CanonicalRepository(tt.host, tt.path); got != tt.want {
				t.Errorf("CanonicalRepository(%q, %q) = %q, want %q", tt.host, tt.path, got, tt.want)
			}
		})
	}
}
