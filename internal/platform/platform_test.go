package platform_test

import (
	"testing"

	. "github.com/onsi/gomega"
	specs "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imageguard/imageguard/internal/platform"
)

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
