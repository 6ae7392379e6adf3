package scanner_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	cdx "github.com/CycloneDX/cyclonedx-go"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/sbom/cyclonedx"
	"github.com/aquasecurity/trivy/pkg/types"
	gcrname "github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
)

// trivyImageSBOM is Trivy's own CycloneDX SBOM of ref, as `trivy image --format cyclonedx` makes
// it: Trivy's remote image and analyzers, Service.Scan with the SBOM scanner, its marshaler.
func trivyImageSBOM(ctx context.Context, t *testing.T, ref string) *cdx.BOM {
	t.Helper()
	report := trivyImage(ctx, t, ref, types.ScanOptions{
		PkgTypes: []string{types.PkgTypeOS, types.PkgTypeLibrary}, PkgRelationships: ftypes.Relationships,
		Scanners: types.Scanners{types.SBOMScanner},
	})
	marshaler := cyclonedx.NewMarshaler(scanner.TrivyVersion())
	bom, err := marshaler.MarshalReport(ctx, report)
	if err != nil {
		t.Fatal(err)
	}
	return bom
}

// sbomPackages is what an SBOM says of the image's packages: each component but the image's own,
// named by its PURL (or type, name and version), with its properties; and which component
// depends on which, by the same names ("image" for the image's own).
func sbomPackages(bom *cdx.BOM) (components []string, dependencies []string) {
	names := map[string]string{bom.Metadata.Component.BOMRef: "image"}
	for _, c := range *bom.Components {
		id := c.PackageURL
		if id == "" {
			id = fmt.Sprintf("%s %s %s", c.Type, c.Name, c.Version)
		}
		names[c.BOMRef] = id
		var props []string
		if c.Properties != nil {
			for _, p := range *c.Properties {
				props = append(props, p.Name+"="+p.Value)
			}
		}
		slices.Sort(props)
		components = append(components, fmt.Sprintf("%s [%s %s %s %s] %s", id, c.Type, c.Group, c.Name, c.Version, strings.Join(props, ",")))
	}
	if bom.Dependencies != nil {
		for _, d := range *bom.Dependencies {
			var on []string
			if d.Dependencies != nil {
				for _, ref := range *d.Dependencies {
					on = append(on, names[ref])
				}
			}
			slices.Sort(on)
			dependencies = append(dependencies, names[d.Ref]+" -> "+strings.Join(on, " "))
		}
	}
	slices.Sort(components)
	slices.Sort(dependencies)
	return components, dependencies
}

// The SBOM written from a kept inventory lists the packages Trivy's own `trivy image --format
// cyclonedx` lists for the same image, with the same PURLs, properties and relationships; the
// SPDX forms are written by Trivy's SPDX writer. Nothing is pulled for it.
func TestSBOMEqualsTrivyImage(t *testing.T) {
	f := newFixture(t)
	images := map[string]func(testing.TB) v1.Image{
		"alpine": alpineImage, "debian": debianImage, "npm": npmImage,
		"go": func(t testing.TB) v1.Image { return testutil.GoBinaryImage(t, testutil.DefaultGoModules) },
	}
	for name, build := range images {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			ctx := testContext(t)
			tagged, digest := f.reg.Push(t, "sbom/"+name, "1.0", build(t))
			want := trivyImageSBOM(ctx, t, tagged)
			wantComponents, wantDeps := sbomPackages(want)
			g.Expect(len(wantComponents)).To(BeNumerically(">=", 2), "the fixture must list packages for the comparison to mean anything")

			inv, _, err := f.scanner.Inventory(ctx, scanner.ImageRef{Repository: f.reg.Host() + "/sbom/" + name, Digest: digest.String()})
			g.Expect(err).NotTo(HaveOccurred())
			parsed, err := gcrname.ParseReference(tagged, gcrname.Insecure)
			g.Expect(err).NotTo(HaveOccurred())
			asked := scanner.ImageName{Repository: parsed.Context().Name(), Digest: digest.String()}
			f.reg.ResetCounts()
			var out bytes.Buffer
			g.Expect(scanner.WriteSBOM(ctx, &out, inv, asked, "cyclonedx")).To(Succeed())
			var got cdx.BOM
			g.Expect(cdx.NewBOMDecoder(bytes.NewReader(out.Bytes()), cdx.BOMFileFormatJSON).Decode(&got)).To(Succeed())
			gotComponents, gotDeps := sbomPackages(&got)
			g.Expect(gotComponents).To(Equal(wantComponents))
			g.Expect(gotDeps).To(Equal(wantDeps))
			g.Expect(got.Metadata.Component.Type).To(Equal(cdx.ComponentTypeContainer))
			// The image is named as Trivy names it (digest, architecture, repository), as VEX
			// documents refer to it.
			g.Expect(got.Metadata.Component.PackageURL).To(Equal(want.Metadata.Component.PackageURL))
			g.Expect(got.Metadata.Component.PackageURL).To(ContainSubstring("@" + digest.String()))

			out.Reset()
			g.Expect(scanner.WriteSBOM(ctx, &out, inv, asked, "spdx-json")).To(Succeed())
			var spdx struct {
				SPDXVersion string `json:"spdxVersion"`
				Packages    []struct {
					Name        string `json:"name"`
					VersionInfo string `json:"versionInfo"`
				} `json:"packages"`
			}
			g.Expect(json.Unmarshal(out.Bytes(), &spdx)).To(Succeed())
			g.Expect(spdx.SPDXVersion).To(HavePrefix("SPDX-2."))
			for _, c := range *got.Components {
				if c.Type == cdx.ComponentTypeLibrary {
					g.Expect(spdx.Packages).To(ContainElement(And(
						HaveField("Name", c.Name), HaveField("VersionInfo", c.Version))), c.Name)
				}
			}
			out.Reset()
			g.Expect(scanner.WriteSBOM(ctx, &out, inv, asked, "spdx")).To(Succeed())
			g.Expect(out.String()).To(HavePrefix("SPDXVersion: SPDX-2."))
			g.Expect(f.reg.Counts().Requests).To(BeZero(), "an SBOM from a kept inventory reads no registry")

			g.Expect(scanner.WriteSBOM(ctx, &out, inv, asked, "xml")).To(MatchError(ContainSubstring(`unknown SBOM format "xml"`)))
		})
	}
}
