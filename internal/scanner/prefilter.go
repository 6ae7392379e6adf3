package scanner

import (
	"slices"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"

	trivydb "github.com/aquasecurity/trivy-db/pkg/db"
	"github.com/aquasecurity/trivy-db/pkg/ecosystem"
	"github.com/aquasecurity/trivy-db/pkg/vulnsrc/vulnerability"
	"github.com/aquasecurity/trivy/pkg/detector/library"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
)

// prefilterFamilies are the OS families whose advisories live in buckets named "<family> <release>"
// with one nested bucket per source package, which Trivy's detector looks up by the package's
// source name (or its name when it has none).
var prefilterFamilies = map[ftypes.OSType]bool{
	ftypes.Alpine: true,
	ftypes.Debian: true,
	ftypes.Ubuntu: true,
}

// advisoryIndex knows which package names have any advisory, per OS family and per language
// ecosystem. Trivy looks every package up on its own (a read transaction, a data source read, an
// error context each); dropping the packages that cannot match before detection makes a re-match
// several times cheaper. Each set is a superset of what Trivy consults (every release of a family;
// every bucket whose name contains "<ecosystem>::", which covers the default "<ecosystem>::<source>"
// buckets and suppliers' "<supplier> <ecosystem>::<source>" ones), so the findings are unchanged.
// It is rebuilt for each DB.
type advisoryIndex struct {
	mu       sync.Mutex
	dbDigest string
	sets     map[string]map[string]struct{}
}

// names returns the nested bucket names (package names) of every root bucket for which inScope
// holds, in the DB identified by dbDigest, built once per key; the caller holds the DB still.
func (x *advisoryIndex) names(dbDigest, key string, inScope func(bucketName string) bool) (map[string]struct{}, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.dbDigest != dbDigest {
		x.dbDigest, x.sets = dbDigest, map[string]map[string]struct{}{}
	}
	if set, ok := x.sets[key]; ok {
		return set, nil
	}
	set := map[string]struct{}{}
	err := trivydb.Config{}.Connection().View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(bucketName []byte, b *bolt.Bucket) error {
			if !inScope(string(bucketName)) {
				return nil
			}
			return b.ForEachBucket(func(pkg []byte) error {
				set[string(pkg)] = struct{}{}
				return nil
			})
		})
	})
	if err != nil {
		return nil, err
	}
	x.sets[key] = set
	return set, nil
}

// candidates returns copies of the OS packages and applications of inv without the packages that
// cannot have advisories: detection filters what it is given in place, so the kept inventory is
// never handed over. Families and language types the index does not cover keep all packages.
func (x *advisoryIndex) candidates(dbDigest string, inv *Inventory) (ftypes.Packages, []ftypes.Application, error) {
	pkgs, err := x.osCandidates(dbDigest, inv)
	if err != nil {
		return nil, nil, err
	}
	apps := make([]ftypes.Application, len(inv.Applications))
	for i, app := range inv.Applications {
		if app.Packages, err = x.langCandidates(dbDigest, app); err != nil {
			return nil, nil, err
		}
		apps[i] = app
	}
	return pkgs, apps, nil
}

func (x *advisoryIndex) osCandidates(dbDigest string, inv *Inventory) (ftypes.Packages, error) {
	if !prefilterFamilies[inv.OS.Family] {
		return slices.Clone(inv.Packages), nil
	}
	prefix := string(inv.OS.Family) + " "
	set, err := x.names(dbDigest, "os "+string(inv.OS.Family), func(bucketName string) bool {
		return strings.HasPrefix(bucketName, prefix)
	})
	if err != nil {
		return nil, err
	}
	return keep(inv.Packages, func(p *ftypes.Package) bool {
		_, bySource := set[p.SrcName]
		_, byName := set[p.Name]
		return bySource || byName
	}), nil
}

// langCandidates keeps the packages of app whose name, normalised as Trivy's library detector
// normalises it for the app's ecosystem, has advisories.
func (x *advisoryIndex) langCandidates(dbDigest string, app ftypes.Application) (ftypes.Packages, error) {
	drv, ok := library.NewDriver(app.Type)
	if !ok {
		return slices.Clone(app.Packages), nil
	}
	eco := ecosystem.Type(drv.Type())
	infix := string(eco) + "::"
	set, err := x.names(dbDigest, "lang "+string(eco), func(bucketName string) bool {
		return strings.Contains(bucketName, infix)
	})
	if err != nil {
		return nil, err
	}
	return keep(app.Packages, func(p *ftypes.Package) bool {
		_, ok := set[vulnerability.NormalizePkgName(eco, p.Name)]
		return ok
	}), nil
}

// keep returns a copy of the packages for which ok holds, allocated once: a Package is large
// enough that growing the slice by appends was a visible part of a re-match.
func keep(pkgs ftypes.Packages, ok func(*ftypes.Package) bool) ftypes.Packages {
	kept := make([]bool, len(pkgs))
	n := 0
	for i := range pkgs {
		if kept[i] = ok(&pkgs[i]); kept[i] {
			n++
		}
	}
	out := make(ftypes.Packages, 0, n)
	for i := range pkgs {
		if kept[i] {
			out = append(out, pkgs[i])
		}
	}
	return out
}
