package scanner_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/testutil"
)

// ecosystemAdvisories cover the language ecosystems of the ecosystem fixtures: findings for some of
// their packages (a name spelled in another case too) and a range that spares the installed version.
const ecosystemAdvisories = `
updatedAt: 2026-11-01T00:00:00Z
dataSources:
  rocky 9: {id: rocky, name: Rocky Linux updateinfo, url: "https://download.rockylinux.org/pub/rocky/"}
advisories:
- {id: CVE-2024-5535, ecosystem: rocky 9, package: openssl-libs, fixedVersion: "1:3.2.2-6.el9_5", arches: [x86_64, aarch64], severity: MEDIUM}
- {id: CVE-2024-5535, ecosystem: rocky 9, package: openssl, fixedVersion: "1:3.2.2-6.el9_5", arches: [x86_64, aarch64], severity: MEDIUM}
- {id: CVE-2025-0725, ecosystem: rocky 9, package: libcurl, fixedVersion: "7.76.1-31.el9", arches: [aarch64], severity: LOW}
- {id: CVE-2024-2398, ecosystem: rocky 9, package: libcurl, fixedVersion: "7.76.1-29.el9_4.1", arches: [x86_64, aarch64], severity: MEDIUM}
- {id: CVE-2024-7347, ecosystem: rocky 9, package: nginx, fixedVersion: "1:1.20.1-20.el9_5", arches: [x86_64, aarch64], severity: MEDIUM}
- {id: CVE-2023-38545, ecosystem: rocky 9, package: curl, fixedVersion: "7.76.1-26.el9_3.2", arches: [x86_64, aarch64], severity: HIGH}
- {id: CVE-2026-2001, ecosystem: debian 12, package: openssl, fixedVersion: 3.0.17-1~deb12u1, severity: HIGH}
- {id: CVE-2023-32681, ecosystem: "pip::GitHub Security Advisory pip", package: requests, vulnerableVersions: [">=2.3.0, <2.31.0"], patchedVersions: ["2.31.0"], severity: MEDIUM}
- {id: CVE-2023-43804, ecosystem: "pip::GitHub Security Advisory pip", package: urllib3, vulnerableVersions: ["<1.26.17"], patchedVersions: ["1.26.17"], severity: HIGH}
- {id: CVE-2024-3651, ecosystem: "pip::GitHub Security Advisory pip", package: idna, vulnerableVersions: ["<3.7"], patchedVersions: ["3.7"], severity: MEDIUM}
- {id: CVE-2024-22195, ecosystem: "pip::GitHub Security Advisory pip", package: jinja2, vulnerableVersions: ["<3.1.3"], patchedVersions: ["3.1.3"], severity: MEDIUM}
- {id: CVE-2026-5001, ecosystem: "pip::GitHub Security Advisory pip", package: pyyaml, vulnerableVersions: ["<6.0.1"], patchedVersions: ["6.0.1"], severity: LOW}
- {id: CVE-2022-23491, ecosystem: "pip::GitHub Security Advisory pip", package: certifi, vulnerableVersions: [">=2015.04.28, <2022.12.07"], patchedVersions: ["2022.12.07"], severity: MEDIUM}
- {id: CVE-2026-5101, ecosystem: "rubygems::GitHub Security Advisory RubyGems", package: rack, vulnerableVersions: ["<2.2.23"], patchedVersions: ["2.2.23"], severity: HIGH}
- {id: CVE-2021-32740, ecosystem: "rubygems::GitHub Security Advisory RubyGems", package: addressable, vulnerableVersions: [">=2.3.0, <2.8.0"], patchedVersions: ["2.8.0"], severity: HIGH}
- {id: CVE-2023-29197, ecosystem: "composer::GitHub Security Advisory Composer", package: guzzlehttp/psr7, vulnerableVersions: ["<1.9.1"], patchedVersions: ["1.9.1"], severity: HIGH}
- {id: CVE-2026-5201, ecosystem: "composer::GitHub Security Advisory Composer", package: monolog/monolog, vulnerableVersions: ["<1.0.0"], patchedVersions: ["1.0.0"], severity: LOW}
- {id: CVE-2021-26701, ecosystem: "nuget::GitHub Security Advisory NuGet", package: system.text.encodings.web, vulnerableVersions: ["<4.5.1"], patchedVersions: ["4.5.1"], severity: CRITICAL}
- {id: GHSA-5crp-9r3c-p9vr, ecosystem: "nuget::GitHub Security Advisory NuGet", package: newtonsoft.json, vulnerableVersions: ["<13.0.1"], patchedVersions: ["13.0.1"], severity: HIGH}
`

// onDebian returns an image of a Debian 12 base (with an OS finding) and a layer of files.
func onDebian(t testing.TB, files map[string][]byte) v1.Image {
	t.Helper()
	base := must(testutil.DebianImage("12.11", []testutil.DebPackage{
		{Name: "libssl3", Version: "3.0.15-1~deb12u1", Source: "openssl"},
		{Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"},
	}))
	app := must(testutil.LayerFromFiles(files))
	return must(testutil.ImageFromLayers(testutil.LinuxAMD64, append(must(base.Layers()), app)...))
}

// debianFiles returns the files of Debian's packages whose path contains one of parts.
func debianFiles(t testing.TB, packages []string, parts ...string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, name := range packages {
		pkg, err := testutil.DebianFiles(testContext(t), name)
		if err != nil {
			t.Fatalf("the fixture needs Debian's %s: %v", name, err)
		}
		for p, data := range pkg.Files {
			for _, part := range parts {
				if strings.Contains(p, part) {
					files[p] = data
				}
			}
		}
	}
	if len(files) == 0 {
		t.Fatalf("no file of %v has %v in its path", packages, parts)
	}
	return files
}

// ecosystemImages are the fixture images of each language ecosystem and of an RPM-based
// distribution, built from real artifacts: Debian's Python and Ruby packages as installed, a
// Composer vendor folder, a .NET deps file, and an RPM database made by rpm itself.
func ecosystemImages() map[string]func(testing.TB) v1.Image {
	return map[string]func(testing.TB) v1.Image{
		// egg-info (requests, urllib3, idna, certifi, Jinja2) and dist-info (PyYAML).
		"python": func(t testing.TB) v1.Image {
			return onDebian(t, debianFiles(t, []string{
				"python3-requests", "python3-urllib3", "python3-idna", "python3-certifi", "python3-jinja2", "python3-yaml",
			}, "dist-packages/"))
		},
		// Gemspecs as rubygems-integration installs them.
		"ruby": func(t testing.TB) v1.Image {
			return onDebian(t, debianFiles(t, []string{"ruby-rack", "ruby-addressable", "ruby-public-suffix"}, "/specifications/"))
		},
		"php": func(t testing.TB) v1.Image {
			return onDebian(t, map[string][]byte{"var/www/app/vendor/composer/installed.json": []byte(composerInstalled)})
		},
		// An RPM database made by Debian's rpm from spec files written here; openssl-libs is a
		// subpackage of openssl.
		"rocky": func(t testing.TB) v1.Image {
			return must(testutil.RockyImage("9.3", []testutil.RPMPackage{
				{Name: "openssl-libs", Source: "openssl", Epoch: 1, Version: "3.0.7", Release: "27.el9"},
				{Name: "openssl", Epoch: 1, Version: "3.0.7", Release: "27.el9"},
				{Name: "libcurl", Source: "curl", Version: "7.76.1", Release: "29.el9_4"},
				{Name: "curl", Version: "7.76.1", Release: "29.el9_4"},
				{Name: "bash", Version: "5.1.8", Release: "9.el9", License: "GPLv3+"},
				// A third party's package: Trivy matches no distribution advisory against it.
				{Name: "nginx", Version: "1.20.1", Release: "1.el9.ngx", Vendor: "NGINX Inc."},
			}))
		},
		"dotnet": func(t testing.TB) v1.Image {
			return onDebian(t, map[string][]byte{"app/Shop.deps.json": []byte(dotnetDeps)})
		},
	}
}

// composerInstalled is Composer 2's vendor/composer/installed.json.
const composerInstalled = `{
    "packages": [
        {"name": "guzzlehttp/psr7", "version": "1.9.0", "version_normalized": "1.9.0.0", "type": "library",
         "require": {"php": ">=5.4.0", "psr/http-message": "~1.0"}, "install-path": "../guzzlehttp/psr7"},
        {"name": "monolog/monolog", "version": "2.9.1", "version_normalized": "2.9.1.0", "type": "library",
         "require": {"php": ">=7.2", "psr/log": "^1.0.1 || ^2.0 || ^3.0"}, "install-path": "../monolog/monolog"},
        {"name": "psr/http-message", "version": "1.0.1", "version_normalized": "1.0.1.0", "type": "library", "install-path": "../psr/http-message"},
        {"name": "psr/log", "version": "1.1.4", "version_normalized": "1.1.4.0", "type": "library", "install-path": "../psr/log"}
    ],
    "dev": false,
    "dev-package-names": []
}`

// dotnetDeps is what `dotnet publish` writes beside an application.
const dotnetDeps = `{
  "runtimeTarget": {"name": ".NETCoreApp,Version=v6.0", "signature": ""},
  "compilationOptions": {},
  "targets": {
    ".NETCoreApp,Version=v6.0": {
      "Shop/1.0.0": {
        "dependencies": {"Newtonsoft.Json": "12.0.1", "System.Text.Encodings.Web": "4.5.0"},
        "runtime": {"Shop.dll": {}}
      },
      "Newtonsoft.Json/12.0.1": {"runtime": {"lib/netstandard2.0/Newtonsoft.Json.dll": {"assemblyVersion": "12.0.0.0", "fileVersion": "12.0.1.23012"}}},
      "System.Text.Encodings.Web/4.5.0": {"runtime": {"lib/netstandard2.0/System.Text.Encodings.Web.dll": {"assemblyVersion": "4.0.3.0", "fileVersion": "4.6.26515.6"}}}
    }
  },
  "libraries": {
    "Shop/1.0.0": {"type": "project", "serviceable": false, "sha512": ""},
    "Newtonsoft.Json/12.0.1": {"type": "package", "serviceable": true, "sha512": "sha512-jlugvHj4pmb6W3tfHHGOGsp0Sb9xH6gDq9P9ZCD9LO1kZYexgQmwOEkAUKkwQfR2rJ3KqOz5KXnrMc4s8Q8G9Q==", "path": "newtonsoft.json/12.0.1", "hashPath": "newtonsoft.json.12.0.1.nupkg.sha512"},
    "System.Text.Encodings.Web/4.5.0": {"type": "package", "serviceable": true, "sha512": "sha512-Xg4G4Indi4dqP1iuAiMSwpiWS54ZghzR644OtsRCm/m/lBMG8dUBhLVN7hLm8NNrNTR+iGbshCPTwrvxZPlm4g==", "path": "system.text.encodings.web/4.5.0", "hashPath": "system.text.encodings.web.4.5.0.nupkg.sha512"}
  }
}`

// ecosystemWants are the findings each ecosystem fixture must have ("id package"), so that an
// analyzer that finds nothing cannot pass the parity tests by agreeing with an empty Trivy answer.
var ecosystemWants = map[string][]string{
	"python": {
		"CVE-2026-2001 libssl3", "CVE-2023-32681 requests", "CVE-2023-43804 urllib3", "CVE-2024-3651 idna",
		"CVE-2024-22195 Jinja2", "CVE-2026-5001 PyYAML", "CVE-2022-23491 certifi",
	},
	"ruby":   {"CVE-2026-2001 libssl3", "CVE-2026-5101 rack"},
	"php":    {"CVE-2026-2001 libssl3", "CVE-2023-29197 guzzlehttp/psr7"},
	"rocky":  {"CVE-2024-5535 openssl-libs", "CVE-2024-5535 openssl", "CVE-2024-2398 libcurl"},
	"dotnet": {"CVE-2026-2001 libssl3", "CVE-2021-26701 System.Text.Encodings.Web", "GHSA-5crp-9r3c-p9vr Newtonsoft.Json"},
}

// TestEcosystemsEqualTrivy compares, per language ecosystem, the scanner's findings with Trivy's
// own image scan (the CLI's path) and its match with Trivy's own ScanTarget of the same inventory,
// every field, on a DB with advisories for each.
func TestEcosystemsEqualTrivy(t *testing.T) {
	f := newFixtureWithDB(t, must(testutil.ParseAdvisories([]byte(ecosystemAdvisories))))
	images := ecosystemImages()
	for _, name := range slices.Sorted(maps.Keys(images)) {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			ctx := testContext(t)
			tagged, digest := f.reg.Push(t, "ecosystems/"+name, "1.0", images[name](t))
			ref := scanner.ImageRef{Repository: f.reg.Host() + "/ecosystems/" + name, Digest: digest.String()}

			inv, res, err := f.scanner.Scan(ctx, ref)
			g.Expect(err).NotTo(HaveOccurred())
			var got []string
			for _, finding := range res.Findings {
				got = append(got, finding.ID+" "+finding.Package)
			}
			g.Expect(got).To(ConsistOf(ecosystemWants[name]))

			// Trivy's own image scan: id, package, versions, severity.
			g.Expect(cliFields(res.Findings)).To(ConsistOf(trivyImageScan(ctx, t, f, tagged)))

			// Trivy's own detection of the kept inventory: every field.
			g.Expect(res.Findings).To(Equal(trivyScanTarget(ctx, t, f, inv)))
		})
	}
}
