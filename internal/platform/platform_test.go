package platform_test

import (
	"testing"

	. "github.com/onsi/gomega"
	specs "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imageguard/imageguard/internal/platform"
)

func TestChooseAsContainerdDoes(t *testing.T) {
	p := func(os, arch, variant string) specs.Platform {
		return specs.Platform{OS: os, Architecture: arch, Variant: variant}
	}
	amd64, arm64 := p("linux", "amd64", ""), p("linux", "arm64", "")
	tests := map[string]struct {
		node   specs.Platform
		images []specs.Platform
		want   int
	}{
		"the node's own":                  {arm64, []specs.Platform{amd64, arm64}, 1},
		"arm64 runs arm/v7 without arm64": {arm64, []specs.Platform{amd64, p("linux", "arm", "v7")}, 1},
		"arm64 prefers arm64 to arm/v7":   {arm64, []specs.Platform{p("linux", "arm", "v7"), arm64}, 1},
		"aarch64 is arm64":                {arm64, []specs.Platform{amd64, p("linux", "aarch64", "")}, 1},
		"ARM64 is arm64":                  {arm64, []specs.Platform{amd64, p("linux", "ARM64", "")}, 1},
		"amd64 runs 386 without amd64":    {amd64, []specs.Platform{p("linux", "386", ""), arm64}, 0},
		"amd64 does not run amd64/v3":     {amd64, []specs.Platform{p("linux", "amd64", "v3"), amd64}, 1},
		"the first of equals":             {amd64, []specs.Platform{amd64, amd64}, 0},
		"none":                            {amd64, []specs.Platform{arm64, p("windows", "amd64", "")}, -1},
		"attestations run nowhere":        {amd64, []specs.Platform{p("unknown", "unknown", "")}, -1},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(platform.Choose(tt.node, tt.images)).To(Equal(tt.want))
		})
	}
}

func TestRuns(t *testing.T) {
	g := NewWithT(t)
	g.Expect(platform.Runs("linux/arm64", "linux/arm/v7")).To(BeTrue())
	g.Expect(platform.Runs("", "linux/386")).To(BeTrue(), "the default platform is linux/amd64")
	g.Expect(platform.Runs("linux/amd64", "linux/arm64")).To(BeFalse())
	g.Expect(platform.Runs("windows/amd64", "linux/amd64")).To(BeFalse())
	g.Expect(platform.Runs("linux/arm", "linux/arm/v6")).To(BeTrue())
	g.Expect(platform.Runs("not a platform!", "linux/amd64")).To(BeFalse())
	g.Expect(platform.Format(specs.Platform{OS: "Linux", Architecture: "aarch64"})).To(Equal("linux/arm64"))
	g.Expect(platform.Format(specs.Platform{OS: "linux", Architecture: "arm"})).To(Equal("linux/arm/v7"))
}
