package main

import (
	"bytes"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestControllerFlags(t *testing.T) {
	g := NewWithT(t)
	opts, err := parseControllerFlags([]string{
		"--leader-elect", "--metrics-bind-address=:9090", "--health-probe-bind-address", ":9091",
	}, &bytes.Buffer{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(opts.LeaderElect).To(BeTrue())
	g.Expect(opts.MetricsAddr).To(Equal(":9090"))
	g.Expect(opts.ProbeAddr).To(Equal(":9091"))
	g.Expect(opts.DB.Repositories).To(Equal([]string{"mirror.gcr.io/aquasec/trivy-db:2", "ghcr.io/aquasecurity/trivy-db:2"}))
	g.Expect(opts.DB.CheckInterval).To(Equal(time.Hour))

	opts, err = parseControllerFlags([]string{
		"--db-repository", "mirror.internal/trivy-db:2,backup.internal/trivy-db:2", "--db-check-interval=5m",
		"--db-path", "/var/lib/trivy/db", "--insecure-registries", "mirror.internal,10.0.0.5:5000", "--cache-dir", "/data",
	}, &bytes.Buffer{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(opts.DB.Repositories).To(Equal([]string{"mirror.internal/trivy-db:2", "backup.internal/trivy-db:2"}))
	g.Expect(opts.DB.CheckInterval).To(Equal(5 * time.Minute))
	g.Expect(opts.DB.Path).To(Equal("/var/lib/trivy/db"))
	g.Expect(opts.Registry.InsecureRegistries).To(Equal([]string{"mirror.internal", "10.0.0.5:5000"}))
	g.Expect(opts.CacheDir).To(Equal("/data"))

	g.Expect(opts.Webhook.Port).To(Equal(9443))

	opts, err = parseControllerFlags([]string{
		"--webhook-port=10250", "--webhook-cert-secret=imageguard-webhook-tls", "--webhook-cert-namespace=imageguard",
		"--webhook-cert-hosts=imageguard-webhook.imageguard.svc,10.0.0.9", "--webhook-configurations=imageguard",
		"--admission-exempt-namespaces=imageguard,monitoring",
	}, &bytes.Buffer{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(opts.Webhook.Port).To(Equal(10250))
	g.Expect(opts.Webhook.CertHosts).To(Equal([]string{"imageguard-webhook.imageguard.svc", "10.0.0.9"}))
	g.Expect(opts.Webhook.ExemptNamespaces).To(Equal([]string{"imageguard", "monitoring"}))
	t.Setenv("POD_NAMESPACE", "")
	_, err = parseControllerFlags([]string{"--webhook-cert-secret=tls"}, &bytes.Buffer{})
	g.Expect(err).To(MatchError(ContainSubstring("--webhook-cert-secret needs --webhook-cert-hosts")))

	_, err = parseControllerFlags([]string{"--no-such-flag"}, &bytes.Buffer{})
	g.Expect(err).To(MatchError(ContainSubstring("no-such-flag")))
	_, err = parseControllerFlags([]string{"stray"}, &bytes.Buffer{})
	g.Expect(err).To(MatchError(ContainSubstring("unexpected arguments")))
}

func TestRunDispatch(t *testing.T) {
	tests := map[string]struct {
		args     []string
		wantCode int
		wantOut  string
	}{
		"help":                {args: []string{"help"}, wantCode: 0, wantOut: "imageguard [controller]"},
		"controller --help":   {args: []string{"controller", "--help"}, wantCode: 0, wantOut: "--leader-elect"},
		"an unknown command":  {args: []string{"bogus"}, wantCode: 2, wantOut: `unknown command "bogus"`},
		"a bad flag":          {args: []string{"--bogus"}, wantCode: 2, wantOut: "unknown flag: --bogus"},
		"flags go to default": {args: []string{"--help"}, wantCode: 0, wantOut: "--metrics-bind-address"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			var out bytes.Buffer
			g.Expect(run(tt.args, &out, &out)).To(Equal(tt.wantCode))
			g.Expect(out.String()).To(ContainSubstring(tt.wantOut))
		})
	}
}

func TestNodePlatformsFlag(t *testing.T) {
	g := NewWithT(t)
	got, err := parseNodePlatforms([]string{"linux/arm64", "linux/amd64", " linux/arm64"})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal([]string{"linux/arm64", ""}), "as a node's platform: the default is empty")
	for _, bad := range []string{"arm64", "linux/arm/v7", "Linux/AMD64", ""} {
		_, err = parseNodePlatforms([]string{bad})
		g.Expect(err).To(MatchError(ContainSubstring("is not os/architecture")), bad)
	}
}
