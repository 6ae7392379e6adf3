package main

import (
	"bytes"
	"testing"

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
