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
		"a padded port":        {"registry.example.com:05000", "app", "registry.example.com:5000/app"},
		"a padded 443":         {"registry.example.com:0443", "app", "registry.example.com/app"},
		"docker hub, padded":   {"index.docker.io:00443", "nginx", "docker.io/library/nginx"},
		"IPv6, long":           {"[0:0:0:0:0:0:0:1]:5000", "app", "[::1]:5000/app"},
		"IPv6 without port":    {"[::1]", "app", "[::1]/app"},
		"IPv6, 443":            {"[::1]:443", "app", "[::1]/app"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := CanonicalRepository(tt.host, tt.path); got != tt.want {
				t.Errorf("CanonicalRepository(%q, %q) = %q, want %q", tt.host, tt.path, got, tt.want)
			}
		})
	}
}
