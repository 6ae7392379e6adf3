package scanner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	// The SQLite driver of Trivy's Java DB and of RPM databases (rpmdb.sqlite: RHEL, Rocky, Alma
	// and Fedora), which Trivy's own main imports and a library user must.
	_ "modernc.org/sqlite"

	"github.com/aquasecurity/trivy/pkg/fanal/analyzer"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/javadb"
)

// JavaDB is the Java DB the jar analyzer reads (vulndb's Manager of the JavaDB artifact).
type JavaDB interface {
	// ViewDir runs fn with the folder of the Java DB in use (trivy-java.db and metadata.json),
	// which is not swapped until fn returns; with "" when none is loaded.
	ViewDir(fn func(dir string) error) error
	// Loaded reports whether a Java DB is loaded.
	Loaded() bool
	// Want asks for the Java DB to be downloaded, when it is fetched on demand.
	Want()
}

// javaArchiveAnalyzer notes the Java archives of an image analysed without the Java DB, so that
// their absence from the findings is said (Inventory.JavaArchives) and the Java DB is fetched.
// It reads no content.
type javaArchiveAnalyzer struct{}

const typeJavaArchives analyzer.Type = "imageguard-java-archives"

const javaArchiveResource = "imageguard/java-archive"

func init() { analyzer.RegisterAnalyzer(javaArchiveAnalyzer{}) }

func (javaArchiveAnalyzer) Type() analyzer.Type { return typeJavaArchives }
func (javaArchiveAnalyzer) Version() int        { return 1 }

// Required matches what Trivy's jar analyzer reads.
func (javaArchiveAnalyzer) Required(filePath string, _ os.FileInfo) bool {
	switch strings.ToLower(filepath.Ext(filePath)) {
	case ".jar", ".war", ".ear", ".par":
		return true
	}
	return false
}

func (javaArchiveAnalyzer) Analyze(_ context.Context, input analyzer.AnalysisInput) (*analyzer.AnalysisResult, error) {
	return &analyzer.AnalysisResult{CustomResources: []ftypes.CustomResource{{Type: javaArchiveResource, FilePath: input.FilePath}}}, nil
}

// javaArchives counts the Java archives detail holds that were not analysed.
func javaArchives(detail ftypes.ArtifactDetail) int {
	n := 0
	for _, r := range detail.CustomResources {
		if r.Type == javaArchiveResource {
			n++
		}
	}
	return n
}

// trivyJavaDB points Trivy's process-global Java DB (pkg/javadb) at a folder: Trivy reads
// <root>/java-db/trivy-java.db, so root holds a link named java-db to the folder. Trivy never
// downloads it (skip update).
var trivyJavaDB struct {
	mu   sync.Mutex
	dir  string
	root string
}

// useJavaDB makes dir the Java DB Trivy's jar analyzer opens.
func useJavaDB(tempDir, dir string) error {
	trivyJavaDB.mu.Lock()
	defer trivyJavaDB.mu.Unlock()
	if trivyJavaDB.dir == dir {
		// The link is made once per folder, and again when a new Scanner cleaned tempDir.
		if _, err := os.Stat(filepath.Join(trivyJavaDB.root, "java-db")); err == nil {
			return nil
		}
	}
	root, err := os.MkdirTemp(tempDir, "java-db-")
	if err != nil {
		return err
	}
	if err := os.Symlink(dir, filepath.Join(root, "java-db")); err != nil {
		return fmt.Errorf("linking the Java DB: %w", err)
	}
	javadb.Init(root, nil, true, true, ftypes.RegistryOptions{})
	if trivyJavaDB.root != "" {
		_ = os.RemoveAll(trivyJavaDB.root)
	}
	trivyJavaDB.dir, trivyJavaDB.root = dir, root
	return nil
}
