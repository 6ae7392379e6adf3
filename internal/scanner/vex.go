package scanner

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/gocsaf/csaf/v3/csaf"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/types"
	"github.com/aquasecurity/trivy/pkg/vex"
)

// Suppressed is a finding a VEX statement removed: what it was, and the statement's status,
// justification and source.
type Suppressed struct {
	ID               string `json:"id"`
	Package          string `json:"package"`
	InstalledVersion string `json:"installedVersion,omitempty"`
	Severity         string `json:"severity,omitempty"`
	Target           string `json:"target,omitempty"`
	// Status is the statement's: not_affected or fixed.
	Status string `json:"status"`
	// Justification is the statement's (an OpenVEX justification, a CSAF flag), when it gives one.
	Justification string `json:"justification,omitempty"`
	// Source is the VEX document the statement came from.
	Source string `json:"source"`
}

// ImageName names an image as Trivy's reports name it, which makes its pkg:oci PURL (the
// product VEX statements name): the repository as it was asked for, and the digest asked for (an
// index's digest when an index was asked for); the architecture comes from the inventory.
type ImageName struct {
	Repository string
	Digest     string
}

// reference is repository@digest of the image named, the inventory's where the name leaves
// them out.
func (n ImageName) reference(inv *Inventory) string {
	return cmp.Or(n.Repository, inv.Repository) + "@" + cmp.Or(n.Digest, inv.Digest)
}

// imageReport is the report Trivy's scan of the image named makes of results: its name, type and
// metadata as `trivy image` sets them (the repository digest and the config's architecture, from
// which the image's PURL is made).
func imageReport(inv *Inventory, name ImageName, detectedOS ftypes.OS, results types.Results) types.Report {
	ref := name.reference(inv)
	report := types.Report{
		SchemaVersion: reportSchemaVersion,
		Trivy:         types.TrivyInfo{Version: TrivyVersion()},
		ArtifactName:  ref,
		ArtifactType:  ftypes.TypeContainerImage,
		Metadata:      types.Metadata{RepoDigests: []string{ref}},
		Results:       results,
	}
	if p, err := ParsePlatform(inv.Platform); err == nil {
		report.Metadata.ImageConfig.Architecture = p.Architecture
		report.Metadata.ImageConfig.OS = p.OS
	}
	if detectedOS.Detected() {
		report.Metadata.OS = &detectedOS
	}
	return report
}

// VEXOptions are the VEX documents a match applies, and how the image is named in them.
type VEXOptions struct {
	// Files are OpenVEX or CSAF JSON documents, each a regular file of at most MaxVEXBytes.
	Files []string
	// Image is the image's name; empty: the inventory's repository and digest.
	Image ImageName
}

// MaxVEXBytes bounds one VEX document: Trivy decodes it whole, up to three times.
const MaxVEXBytes = 16 << 20

// MatchVEX matches inv against the current DB as Match does, then removes the findings the VEX
// documents state not to affect the image: Trivy's own VEX filter (pkg/vex, what `trivy image
// --vex FILE` runs), on the SBOM of every package of the image, so that a statement applies
// exactly when it applies in Trivy: its vulnerability, and its product (the image,
// pkg:oci/NAME@DIGEST?arch=…&repository_url=…, or a package) and subcomponents (PURLs). The removed
// findings are in Result.Suppressed, with the statement's status, justification and source. The
// documents are checked (CheckVEXFiles) before the DB is held. It makes no registry request.
func (s *Scanner) MatchVEX(ctx context.Context, inv *Inventory, opts VEXOptions) (*Result, error) {
	if err := CheckVEXFiles(opts.Files); err != nil {
		return nil, err
	}
	var res *Result
	err := s.db.View(func(info DBInfo) error {
		var err error
		res, err = s.matcher.match(ctx, inv, info, opts)
		if res != nil {
			res.DB = info
		}
		return err
	})
	return res, err
}

// inventoryCopies returns copies of inv's packages and applications, which Trivy's ScanTarget
// may filter in place.
func inventoryCopies(inv *Inventory) (ftypes.Packages, []ftypes.Application) {
	apps := make([]ftypes.Application, len(inv.Applications))
	for i, app := range inv.Applications {
		app.Packages = slices.Clone(app.Packages)
		apps[i] = app
	}
	return slices.Clone(inv.Packages), apps
}

// applyVEX runs Trivy's VEX filter over the report Trivy would have made of results (their
// vulnerabilities filtered already, as result.Filter does before it) and returns what it removed.
func applyVEX(ctx context.Context, inv *Inventory, detectedOS ftypes.OS, results types.Results, opts VEXOptions) (_ []Suppressed, err error) {
	report := imageReport(inv, opts.Image, detectedOS, results)
	if err := checkVEXPaths(report); err != nil {
		return nil, err
	}
	sources := make([]vex.Source, len(opts.Files))
	for i, f := range opts.Files {
		sources[i] = vex.Source{Type: vex.TypeFile, FilePath: f}
	}
	// Trivy's VEX code dereferences what a document may leave out (CheckVEXFiles rejects the
	// cases known); a panic in it is this document's error, not the process's end.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("applying VEX %v: the document could not be applied (%v)", opts.Files, r)
		}
	}()
	if err := vex.Filter(ctx, &report, vex.Options{Sources: sources}); err != nil {
		return nil, fmt.Errorf("applying VEX: %w", err)
	}
	var suppressed []Suppressed
	for _, r := range report.Results {
		for _, m := range r.ModifiedFindings {
			v, ok := m.Finding.(types.DetectedVulnerability)
			if !ok {
				continue
			}
			suppressed = append(suppressed, Suppressed{
				ID: v.VulnerabilityID, Package: v.PkgName, InstalledVersion: v.InstalledVersion,
				Severity: v.Severity, //nolint:staticcheck // SA1019: the severity Findings carry
				Target:   r.Target, Status: string(m.Status), Justification: m.Statement, Source: m.Source,
			})
		}
	}
	slices.SortFunc(suppressed, func(a, b Suppressed) int {
		return cmp.Or(strings.Compare(a.ID, b.ID), strings.Compare(a.Package, b.Package),
			strings.Compare(a.InstalledVersion, b.InstalledVersion), strings.Compare(a.Target, b.Target),
			strings.Compare(a.Source, b.Source), strings.Compare(a.Status, b.Status))
	})
	return suppressed, nil
}

// CheckVEXFiles checks that each VEX document can be handed to Trivy, which opens and decodes it
// with no bound: a regular file (not a FIFO, a device or a folder, which would block or fail
// late) of at most MaxVEXBytes; not a name Trivy's --vex takes for another source (repo, oci,
// sbom-ref: they would reach the network); and, for a CSAF document, without the holes Trivy's
// CSAF code dereferences (a null vulnerability, one without a CVE, no product tree, a
// relationship without both products).
func CheckVEXFiles(files []string) error {
	for _, f := range files {
		switch f {
		case "repo", "repository", "oci", "sbom-ref":
			return fmt.Errorf("VEX document %q: a VEX file path is expected (VEX repositories, OCI attestations and SBOM references are not read from here)", f)
		}
		fi, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("VEX document: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("VEX document %s: not a regular file", f)
		}
		if fi.Size() > MaxVEXBytes {
			return fmt.Errorf("VEX document %s: %d bytes, more than the %d a document may have", f, fi.Size(), MaxVEXBytes)
		}
		file, err := os.Open(f)
		if err != nil {
			return fmt.Errorf("VEX document: %w", err)
		}
		raw, err := io.ReadAll(io.LimitReader(file, MaxVEXBytes+1))
		_ = file.Close()
		if err != nil {
			return fmt.Errorf("VEX document %s: %w", f, err)
		}
		if len(raw) > MaxVEXBytes {
			return fmt.Errorf("VEX document %s: more than the %d bytes a document may have", f, MaxVEXBytes)
		}
		if err := checkCSAF(raw); err != nil {
			return fmt.Errorf("VEX document %s: %w", f, err)
		}
	}
	return nil
}

// checkCSAF rejects a CSAF document (what Trivy decodes as one: neither CycloneDX's bomFormat nor
// OpenVEX's @context, and gocsaf's Advisory with vulnerabilities) whose holes Trivy's CSAF code
// would dereference.
func checkCSAF(raw []byte) error {
	var kind struct {
		BOMFormat string `json:"bomFormat"`
		Context   string `json:"@context"`
	}
	if json.Unmarshal(raw, &kind) != nil || kind.BOMFormat != "" || kind.Context != "" {
		return nil // not CSAF: Trivy's own decoding says what it is
	}
	var adv csaf.Advisory
	if json.Unmarshal(raw, &adv) != nil || adv.Vulnerabilities == nil {
		return nil
	}
	for i, v := range adv.Vulnerabilities {
		if v == nil || v.CVE == nil || *v.CVE == "" {
			return fmt.Errorf("CSAF vulnerabilities[%d] has no cve", i)
		}
	}
	if adv.ProductTree == nil {
		return errors.New("CSAF document has no product_tree")
	}
	if adv.ProductTree.RelationShips != nil {
		for i, r := range *adv.ProductTree.RelationShips {
			if r == nil || r.ProductReference == nil || r.RelatesToProductReference == nil || r.FullProductName == nil || r.FullProductName.ProductID == nil {
				return fmt.Errorf("CSAF product_tree.relationships[%d] lacks a product, the product it relates to, or its full product name", i)
			}
			if *r.ProductReference == *r.RelatesToProductReference {
				return fmt.Errorf("CSAF product_tree.relationships[%d] relates %q to itself", i, *r.ProductReference)
			}
		}
	}
	return nil
}

// maxVEXPaths bounds the paths from a vulnerable package up to the image: Trivy's VEX filter
// follows each one (a search that is exponential in a lattice of dependencies), so a graph with
// more is refused rather than searched for minutes.
const maxVEXPaths = 100_000

// checkVEXPaths counts, for each package of report's results, the paths from it up through the
// packages that depend on it to its result (and so to the image), and fails when one has more
// than maxVEXPaths. It counts every package as reaching its result directly too, an over-count
// that keeps the bound safe.
func checkVEXPaths(report types.Report) error {
	for _, r := range report.Results {
		parents := map[string][]string{}
		for _, p := range r.Packages {
			for _, child := range p.DependsOn {
				parents[child] = append(parents[child], p.ID)
			}
		}
		paths := map[string]int{}
		onPath := map[string]bool{}
		var count func(id string) int
		count = func(id string) int {
			if n, ok := paths[id]; ok {
				return n
			}
			if onPath[id] {
				return 0 // a cycle: Trivy's search does not go round it either
			}
			onPath[id] = true
			n := 1
			for _, parent := range parents[id] {
				if n += count(parent); n > maxVEXPaths {
					n = maxVEXPaths + 1
					break
				}
			}
			onPath[id] = false
			paths[id] = n
			return n
		}
		for _, p := range r.Packages {
			if n := count(p.ID); n > maxVEXPaths {
				return fmt.Errorf("VEX is not applied: package %s reaches the image by more than %d paths through the packages that depend on it", p.Name, maxVEXPaths)
			}
		}
	}
	return nil
}
