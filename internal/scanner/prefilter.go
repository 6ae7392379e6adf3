package scanner

import (
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"

	trivydb "github.com/aquasecurity/trivy-db/pkg/db"
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

// advisoryIndex knows, per OS family, which package names have any advisory in any release of
// that family. Trivy looks every package up in its own read transaction; dropping the packages
// that cannot match before detection makes a re-match several times cheaper. The set is a
// superset of what Trivy consults (every release, not only the image's), so the findings are
// unchanged. It is rebuilt for each DB.
type advisoryIndex struct {
	mu       sync.Mutex
	dbDigest string
	families map[ftypes.OSType]map[string]struct{}
}

// names returns the package names with advisories for family in the DB identified by dbDigest;
// the caller holds the DB still.
func (x *advisoryIndex) names(dbDigest string, family ftypes.OSType) (map[string]struct{}, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.dbDigest != dbDigest {
		x.dbDigest, x.families = dbDigest, map[ftypes.OSType]map[string]struct{}{}
	}
	if set, ok := x.families[family]; ok {
		return set, nil
	}
	set := map[string]struct{}{}
	prefix := string(family) + " "
	err := trivydb.Config{}.Connection().View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(bucketName []byte, b *bolt.Bucket) error {
			if !strings.HasPrefix(string(bucketName), prefix) {
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
	x.families[family] = set
	return set, nil
}

// candidates returns the OS packages of inv that may have advisories: all of them for families
// the index does not cover.
func (x *advisoryIndex) candidates(dbDigest string, inv *Inventory) (ftypes.Packages, error) {
	if !prefilterFamilies[inv.OS.Family] {
		return append(ftypes.Packages(nil), inv.Packages...), nil
	}
	set, err := x.names(dbDigest, inv.OS.Family)
	if err != nil {
		return nil, err
	}
	var out ftypes.Packages
	for _, p := range inv.Packages {
		_, bySource := set[p.SrcName]
		_, byName := set[p.Name]
		if bySource || byName {
			out = append(out, p)
		}
	}
	return out, nil
}
