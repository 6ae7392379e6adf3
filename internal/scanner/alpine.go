package scanner

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"

	trivydb "github.com/aquasecurity/trivy-db/pkg/db"
	dbTypes "github.com/aquasecurity/trivy-db/pkg/types"
	"github.com/aquasecurity/trivy-db/pkg/vulnsrc/bucket"
	"github.com/aquasecurity/trivy/pkg/detector/ospkg/alpine"
	"github.com/aquasecurity/trivy/pkg/detector/ospkg/driver"
	osver "github.com/aquasecurity/trivy/pkg/detector/ospkg/version"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/log"
	"github.com/aquasecurity/trivy/pkg/scan/utils"
	"github.com/aquasecurity/trivy/pkg/types"
)

// alpineDriver is Trivy's Alpine detector (pkg/detector/ospkg/alpine, Trivy v0.74) with the DB
// reads batched. Trivy opens a bolt read transaction, reads the bucket's data source and builds an
// error context for every package, and parses versions through a 4 KiB buffer each; those made
// most of a re-match. This driver reads every package's advisories and the data source in one
// transaction and otherwise decides exactly as Trivy does: the same stream (repository release
// over OS minor version), the same lookup (origin, else name), the same version rules
// (go-apk-version's, read in place: apkversion.go) and the same fields on each finding. It is
// plugged in through Trivy's own option (ospkgDetector.WithDriver), so the supported-version check,
// third-party filtering, suppliers, FillInfo and result filtering stay Trivy's.
// TestMatchEqualsTrivyScanTarget compares it with the Trivy release linked in, so an upgrade that
// changes Alpine detection fails there.
type alpineDriver struct {
	trivy *alpine.Scanner
}

var _ driver.Driver = alpineDriver{}

func newAlpineDriver() alpineDriver { return alpineDriver{trivy: alpine.NewScanner()} }

// IsSupportedVersion is Trivy's.
func (d alpineDriver) IsSupportedVersion(ctx context.Context, family ftypes.OSType, osVer string) bool {
	return d.trivy.IsSupportedVersion(ctx, family, osVer)
}

// Detect returns the findings of pkgs, as alpine.Scanner.Detect does.
func (d alpineDriver) Detect(ctx context.Context, osVer string, repo *ftypes.Repository, pkgs []ftypes.Package) ([]types.DetectedVulnerability, error) {
	osVer = osver.Minor(osVer)
	repoRelease := alpineRepoRelease(repo)
	stream := osVer
	if repoRelease != "" && osVer != repoRelease {
		// As Trivy: prefer the repository release.
		stream = repoRelease
		if repoRelease != "edge" {
			log.WarnContext(ctx, "Mixing Alpine versions is unsupported",
				log.String("os", osVer), log.String("repository", repoRelease))
		}
	}
	bucketName := bucket.NewAlpine(stream).Name()

	// The advisories that match, gathered in the transaction; the (large) findings are made once
	// their number is known.
	type hit struct {
		pkg *ftypes.Package
		adv dbTypes.Advisory
	}
	var hits []hit
	var source *dbTypes.DataSource
	err := trivydb.Config{}.Connection().View(func(tx *bolt.Tx) error {
		root := tx.Bucket([]byte(bucketName))
		if root == nil {
			return nil // no advisories for this release: Trivy finds none either
		}
		source = readDataSource(ctx, tx, bucketName)
		var advisories []dbTypes.Advisory // reused from package to package
		for i := range pkgs {
			pkg := &pkgs[i]
			srcName := pkg.SrcName
			if srcName == "" {
				srcName = pkg.Name
			}
			var err error
			advisories, err = readAdvisories(advisories[:0], root, srcName)
			if err != nil {
				return fmt.Errorf("failed to get alpine advisories: %s/%s: %w", bucketName, srcName, err)
			}
			if len(advisories) == 0 {
				continue
			}
			sourceVersion := utils.FormatSrcVersion(*pkg)
			if !apkValid(sourceVersion) {
				log.DebugContext(ctx, "Failed to parse the installed package version",
					log.String("version", sourceVersion))
				continue
			}
			for _, adv := range advisories {
				if alpineVulnerable(ctx, sourceVersion, adv) {
					hits = append(hits, hit{pkg: pkg, adv: adv})
				}
			}
		}
		return nil
	})
	if err != nil || len(hits) == 0 {
		return nil, err
	}
	vulns := make([]types.DetectedVulnerability, len(hits))
	for i, h := range hits {
		vulns[i] = types.DetectedVulnerability{
			VulnerabilityID:  h.adv.VulnerabilityID,
			PkgID:            h.pkg.ID,
			PkgName:          h.pkg.Name,
			InstalledVersion: utils.FormatVersion(*h.pkg),
			FixedVersion:     h.adv.FixedVersion,
			Layer:            h.pkg.Layer,
			PkgIdentifier:    h.pkg.Identifier,
			Custom:           h.adv.Custom,
		}
		if source != nil {
			// trivy-db gives every advisory its own copy.
			ds := *source
			vulns[i].DataSource = &ds
		}
	}
	return vulns, nil
}

// readDataSource reads the data source recorded for a root bucket, as trivy-db's getDataSource
// does: none when there is no record, and none (logged) when it cannot be decoded.
func readDataSource(ctx context.Context, tx *bolt.Tx, bucketName string) *dbTypes.DataSource {
	b := tx.Bucket([]byte("data-source"))
	if b == nil {
		return nil
	}
	raw := b.Get([]byte(bucketName))
	if raw == nil {
		return nil
	}
	var source dbTypes.DataSource
	if err := json.Unmarshal(raw, &source); err != nil {
		log.DebugContext(ctx, "Data source error", log.Err(err))
		return nil
	}
	if source == (dbTypes.DataSource{}) {
		return nil
	}
	return &source
}

// readAdvisories appends the advisories of one package of root to advisories, decoded as
// trivy-db's GetAdvisories decodes them (the data source is added by the caller).
func readAdvisories(advisories []dbTypes.Advisory, root *bolt.Bucket, pkgName string) ([]dbTypes.Advisory, error) {
	b := root.Bucket([]byte(pkgName))
	if b == nil {
		return advisories, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		if len(v) == 0 {
			return nil // a nested bucket
		}
		advisories = append(advisories, dbTypes.Advisory{})
		adv := &advisories[len(advisories)-1]
		// Unmarshal copies what it keeps, so nothing points into the mmap after the transaction.
		if err := json.Unmarshal(v, adv); err != nil {
			return fmt.Errorf("json unmarshal error: %s: %w", k, err)
		}
		adv.VulnerabilityID = string(k)
		return nil
	})
	return advisories, err
}

// alpineVulnerable is alpine.Scanner.isVulnerable, with the apk version comparison done in
// place (apkValid, apkCompare).
func alpineVulnerable(ctx context.Context, installed string, adv dbTypes.Advisory) bool {
	if adv.AffectedVersion != "" {
		if !apkValid(adv.AffectedVersion) {
			log.DebugContext(ctx, "Failed to parse the affected package version",
				log.String("version", adv.AffectedVersion))
			return false
		}
		if apkCompare(adv.AffectedVersion, installed) > 0 {
			return false
		}
	}
	if adv.FixedVersion == "" {
		return true
	}
	if !apkValid(adv.FixedVersion) {
		log.DebugContext(ctx, "Failed to parse the fixed version", log.String("version", adv.FixedVersion))
		return false
	}
	return apkCompare(installed, adv.FixedVersion) < 0
}

// alpineRepoRelease is alpine.Scanner.repoRelease: the repository release as major.minor.
func alpineRepoRelease(repo *ftypes.Repository) string {
	if repo == nil {
		return ""
	}
	release := repo.Release
	if strings.Count(release, ".") > 1 {
		release = release[:strings.LastIndex(release, ".")]
	}
	return release
}
