package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/pflag"

	"github.com/imageguard/imageguard/internal/imageref"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/vulndb"
)

// dbOptions are the vulnerability DB flags shared by the controller and scan commands.
type dbOptions struct {
	Repositories  []string
	CheckInterval time.Duration
	CheckTimeout  time.Duration
	Path          string
}

func (o *dbOptions) bindFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&o.Repositories, "db-repository", vulndb.DefaultRepositories,
		"OCI repositories of the Trivy vulnerability DB artifact, tried in order (comma list); point it at a mirror for restricted networks.")
	fs.StringVar(&o.Path, "db-path", "",
		"Folder holding a Trivy DB (trivy.db and metadata.json) to use as it is, never downloading: for air-gapped clusters.")
}

// registryOptions are the registry flags shared by the controller and scan commands.
type registryOptions struct {
	InsecureRegistries []string
	Timeout            time.Duration
}

func (o *registryOptions) bindFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&o.InsecureRegistries, "insecure-registries", nil,
		"Registry hosts (host or host:port, comma list) reached over plain HTTP or without verifying TLS certificates.")
	fs.DurationVar(&o.Timeout, "registry-timeout", registry.DefaultTimeout,
		"Deadline of a registry connection, TLS handshake, wait for an answer's headers, whole request other than a blob download, and wait for a blob's next bytes.")
}

// client returns the registry client of these options.
func (o *registryOptions) client() *registry.Client {
	return registry.NewClient(registry.Options{InsecureHosts: o.InsecureRegistries, Timeout: o.Timeout})
}

// limitOptions are the bounds of one analysis and of the DB, shared by the controller and scan
// commands. A zero value takes the default; a negative one turns the check off.
type limitOptions struct {
	Image   scanner.Limits
	DBBytes int64
}

func (o *limitOptions) bindFlags(fs *pflag.FlagSet) {
	d := scanner.DefaultLimits
	fs.Int64Var(&o.Image.MaxCompressedBytes, "max-image-bytes", d.MaxCompressedBytes,
		"Largest sum of an image's compressed layer sizes, as its manifest declares them: the cache disk one analysis uses.")
	fs.Int64Var(&o.Image.MaxUncompressedBytes, "max-layer-bytes", d.MaxUncompressedBytes, "Largest expanded size of one layer.")
	fs.Int64Var(&o.Image.MaxTempBytes, "max-temp-bytes", d.MaxTempBytes,
		"Largest disk of Trivy's temporary files in one analysis (the files its analyzers copy out of a layer, the archives they unpack); with --max-image-bytes, the disk one analysis worker may use.")
	fs.IntVar(&o.Image.MaxLayers, "max-layers", d.MaxLayers, "Most layers of one image.")
	fs.IntVar(&o.Image.MaxFiles, "max-files", d.MaxFiles, "Most files in one layer.")
	fs.Int64Var(&o.Image.MaxConfigBytes, "max-config-bytes", d.MaxConfigBytes,
		"Largest image config blob, checked from the manifest before it is read into memory.")
	fs.Int64Var(&o.Image.MaxPackageDBBytes, "max-package-db-bytes", d.MaxPackageDBBytes,
		"Largest package database or manifest parsed into memory (apk, dpkg, rpm, package.json, Python METADATA, gemspec), checked from its tar header.")
	fs.IntVar(&o.Image.MaxPackages, "max-packages", d.MaxPackages, "Most packages in one image's inventory.")
	fs.Int64Var(&o.Image.MaxInventoryBytes, "max-inventory-bytes", d.MaxInventoryBytes, "Largest encoded inventory kept for one image.")
	fs.Int64Var(&o.DBBytes, "db-max-bytes", vulndb.DefaultMaxBytes,
		"Largest vulnerability DB artifact, compressed and expanded; the cache holds two during a swap.")
}

// imageOptions are the flags of the commands that analyse one image (scan, sbom).
type imageOptions struct {
	JavaDB   javaDBOptions
	Registry registryOptions
	Limits   limitOptions
	CacheDir string
	Timeout  time.Duration
	Image    string
	// Platform picks the image of an index (os/architecture[/variant]); empty: linux/amd64.
	Platform string
	// LayerCacheMaxBytes bounds the layer cache; 0: none.
	LayerCacheMaxBytes int64
}

func (o *imageOptions) bindFlags(fs *pflag.FlagSet) {
	o.JavaDB.bindFlags(fs)
	o.Registry.bindFlags(fs)
	o.Limits.bindFlags(fs)
	fs.StringVar(&o.CacheDir, "cache-dir", defaultCacheDir(), "Folder for the downloaded DBs and the kept image inventories.")
	fs.DurationVar(&o.Timeout, "scan-timeout", 10*time.Minute, "Time limit of the image analysis.")
	fs.StringVar(&o.Platform, "platform", "linux/amd64",
		"Platform whose image of a multi-platform index is analysed: os/architecture[/variant], as a node's status.nodeInfo gives it.")
	fs.Int64Var(&o.LayerCacheMaxBytes, "layer-cache-max-bytes", 1<<30,
		"Bytes of the layer cache under --cache-dir, so that an image whose layers an earlier run analysed pulls only its new layers; 0 keeps none.")
}

// parse checks the flags and takes the image from the arguments.
func (o *imageOptions) parse(fs *pflag.FlagSet) error {
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("%s takes exactly one image reference", strings.TrimPrefix(fs.Name(), "imageguard "))
	}
	if o.LayerCacheMaxBytes < 0 {
		return errors.New("--layer-cache-max-bytes must not be negative (0 keeps no layer cache)")
	}
	if _, err := scanner.ParsePlatform(o.Platform); err != nil {
		return fmt.Errorf("--platform: %w", err)
	}
	o.Image = fs.Arg(0)
	return nil
}

// scanOptions are the flags of `imageguard scan`.
type scanOptions struct {
	imageOptions
	DB     dbOptions
	Output string
	// VEX are VEX documents (OpenVEX, CSAF) applied to the findings.
	VEX []string
}

func defaultCacheDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "imageguard")
	}
	return filepath.Join(os.TempDir(), "imageguard")
}

func parseScanFlags(args []string, output io.Writer) (*scanOptions, error) {
	opts := &scanOptions{}
	fs := pflag.NewFlagSet("imageguard scan", pflag.ContinueOnError)
	fs.SetOutput(output)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(output, "Usage: imageguard scan IMAGE [flags]\n\nScans one image with the same engine as the controller.\n\nFlags:\n%s", fs.FlagUsages())
	}
	opts.DB.bindFlags(fs)
	fs.StringVarP(&opts.Output, "output", "o", "table", "Output format: table or json.")
	fs.StringSliceVar(&opts.VEX, "vex", nil,
		"VEX documents (OpenVEX or CSAF JSON files, comma list or repeated) whose not_affected and fixed statements remove findings, as trivy image --vex does; what they remove is listed as suppressed.")
	opts.bindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := opts.parse(fs); err != nil {
		return nil, err
	}
	if opts.Output != "table" && opts.Output != "json" {
		return nil, fmt.Errorf("unknown output format %q: use table or json", opts.Output)
	}
	// Checked before the DB is loaded and the image analysed.
	if err := scanner.CheckVEXFiles(opts.VEX); err != nil {
		return nil, fmt.Errorf("--vex: %w", err)
	}
	return opts, nil
}

func runScan(args []string, stdout, stderr io.Writer) int {
	opts, err := parseScanFlags(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "imageguard scan: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	report, err := scanImage(ctx, opts, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "imageguard scan: %v\n", err)
		return 1
	}
	if err := printReport(stdout, opts.Output, report); err != nil {
		fmt.Fprintf(stderr, "imageguard scan: %v\n", err)
		return 1
	}
	return 0
}

// scanReport is what `imageguard scan` prints.
type scanReport struct {
	Image           string            `json:"image"`
	Digest          string            `json:"digest"`
	Platform        string            `json:"platform"`
	OS              scanner.OS        `json:"os"`
	Scanner         string            `json:"scanner"`
	DB              scanDB            `json:"vulnerabilityDB"`
	Summary         map[string]int    `json:"summary"`
	Vulnerabilities []scanner.Finding `json:"vulnerabilities"`
	// Suppressed are the findings --vex documents removed; Summary and Vulnerabilities count
	// only what still applies.
	Suppressed []scanner.Suppressed `json:"suppressed,omitempty"`
	// JavaArchivesNotAnalysed counts the jar, war, ear and par files whose packages are not in the
	// findings: no Java DB could be loaded.
	JavaArchivesNotAnalysed int `json:"javaArchivesNotAnalysed,omitempty"`
}

type scanDB struct {
	UpdatedAt time.Time `json:"updatedAt"`
	Digest    string    `json:"digest"`
}

// imageSession is one image of a command, resolved to its digest, and the scanner that analyses
// it, with the Java DB loaded on demand.
type imageSession struct {
	scanner    *scanner.Scanner
	ref        scanner.ImageRef
	repository string
	// name is the image as Trivy names it in reports (and so in PURLs, which VEX documents
	// match): the repository as the user spelled it, normalised as go-containerregistry does,
	// and the digest the user's reference resolved to (an index's, when it names an index).
	name   scanner.ImageName
	javaDB *vulndb.Manager
	stderr io.Writer
}

// openImage resolves opts.Image to its digest and opens a scanner over db.
func openImage(ctx context.Context, opts *imageOptions, db func(*registry.Client, authn.Keychain) (scanner.DB, error), stderr io.Writer) (*imageSession, error) {
	client := opts.Registry.client()
	ref, err := client.ParseReference(opts.Image)
	if err != nil {
		return nil, err
	}
	// The user's own docker credentials, as `docker pull` would use them.
	keychain := authn.DefaultKeychain
	digest, err := client.ResolveDigest(ctx, opts.Image, keychain)
	if err != nil {
		return nil, err
	}
	vulnDB, err := db(client, keychain)
	if err != nil {
		return nil, err
	}
	// The Java DB, as the controller has it, but loaded only once an image has Java archives:
	// the kept one when its repository still has it, else downloaded (--java-db-path: as it is).
	javaDB, err := vulndb.New(vulndb.Options{
		Artifact: vulndb.JavaDB, OnDemand: true,
		Repositories: opts.JavaDB.Repositories,
		LocalPath:    opts.JavaDB.Path,
		CacheDir:     opts.CacheDir,
		Registry:     client,
		Keychain:     keychain,
		MaxBytes:     opts.Limits.DBBytes,
		Log:          logr.Discard(),
	})
	if err != nil {
		return nil, err
	}
	s, err := scanner.New(scanner.Options{CacheDir: opts.CacheDir, Timeout: opts.Timeout, Limits: opts.Limits.Image,
		LayerCacheMaxBytes: opts.LayerCacheMaxBytes, JavaDB: javaDB}, client, vulnDB)
	if err != nil {
		_ = javaDB.Close()
		return nil, err
	}
	repository := imageref.CanonicalRepository(ref.Context().RegistryStr(), ref.Context().RepositoryStr())
	return &imageSession{scanner: s, repository: repository, javaDB: javaDB, stderr: stderr,
		name: scanner.ImageName{Repository: ref.Context().Name(), Digest: digest},
		ref:  scanner.ImageRef{Repository: repository, Digest: digest, Platform: opts.Platform, Keychain: keychain}}, nil
}

func (s *imageSession) close() { _ = s.javaDB.Close() }

// withJavaDB runs analyse, and again with the Java DB loaded when the image has Java archives
// (analysed again then, with them); it warns when no Java DB can be had.
func (s *imageSession) withJavaDB(ctx context.Context, analyse func() (javaArchives int, err error)) error {
	jars, err := analyse()
	if err != nil || jars == 0 {
		return err
	}
	if jerr := s.javaDB.Open(ctx); jerr != nil {
		fmt.Fprintf(s.stderr, "imageguard: warning: the Java DB could not be loaded: %v\n", jerr)
		return nil
	}
	_, err = analyse()
	return err
}

func scanImage(ctx context.Context, opts *scanOptions, stderr io.Writer) (*scanReport, error) {
	session, err := openImage(ctx, &opts.imageOptions, func(client *registry.Client, keychain authn.Keychain) (scanner.DB, error) {
		db, err := vulndb.New(vulndb.Options{
			Repositories: opts.DB.Repositories,
			LocalPath:    opts.DB.Path,
			CacheDir:     opts.CacheDir,
			Registry:     client,
			Keychain:     keychain,
			MaxBytes:     opts.Limits.DBBytes,
			Log:          logr.Discard(),
		})
		if err != nil {
			return nil, err
		}
		// The DB a previous run kept is reused when the repository still has it (one manifest
		// request); a local DB's identity is kept beside it, so it is not hashed at every run.
		if err := db.Open(ctx); err != nil {
			return nil, fmt.Errorf("loading the vulnerability DB: %w", err)
		}
		if err := db.LastError(); err != nil {
			fmt.Fprintf(stderr, "imageguard scan: warning: checking for a newer vulnerability DB failed; the one kept from an earlier run is used: %v\n", err)
		}
		return db, nil
	}, stderr)
	if err != nil {
		return nil, err
	}
	defer session.close()
	var res *scanner.Result
	err = session.withJavaDB(ctx, func() (int, error) {
		var err error
		inv, _, err := session.scanner.Inventory(ctx, session.ref)
		if err != nil {
			return 0, err
		}
		if res, err = session.scanner.MatchVEX(ctx, inv, scanner.VEXOptions{Files: opts.VEX, Image: session.name}); err != nil {
			return 0, err
		}
		return res.JavaArchives, nil
	})
	if err != nil {
		return nil, err
	}
	s, digest, repository := session.scanner, session.ref.Digest, session.repository
	report := &scanReport{
		Image: repository, Digest: digest, Platform: res.Platform, OS: res.OS, Scanner: "Trivy " + s.Version(),
		DB:                      scanDB{UpdatedAt: res.DB.UpdatedAt, Digest: res.DB.Digest},
		Summary:                 map[string]int{},
		Vulnerabilities:         res.Findings,
		Suppressed:              res.Suppressed,
		JavaArchivesNotAnalysed: res.JavaArchives,
	}
	if res.JavaArchives > 0 {
		fmt.Fprintf(stderr, "imageguard scan: warning: %d Java archives (jar, war, ear, par) were not analysed (no Java DB: --java-db-repository, --java-db-path); their packages are not in the findings\n", res.JavaArchives)
	}
	if report.Vulnerabilities == nil {
		report.Vulnerabilities = []scanner.Finding{}
	}
	for _, f := range res.Findings {
		report.Summary[strings.ToLower(f.Severity)]++
	}
	return report, nil
}

// printable replaces the control characters of s (tabs, new lines, escapes) with spaces.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

func printReport(w io.Writer, format string, r *scanReport) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Fprintf(w, "%s@%s (%s %s, %s)\n", r.Image, r.Digest, r.OS.Family, r.OS.Name, r.Platform)
	var counts []string
	for _, sev := range scanner.Severities {
		counts = append(counts, fmt.Sprintf("%s: %d", sev, r.Summary[strings.ToLower(sev)]))
	}
	fmt.Fprintf(w, "Total: %d (%s)\n\n", len(r.Vulnerabilities), strings.Join(counts, ", "))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPACKAGE\tINSTALLED\tFIXED\tSEVERITY\tTARGET")
	for _, f := range r.Vulnerabilities {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.ID, f.Package, f.InstalledVersion, f.FixedVersion, f.Severity, f.Target)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Suppressed) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\nSuppressed by VEX: %d\n\n", len(r.Suppressed))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPACKAGE\tINSTALLED\tSTATUS\tJUSTIFICATION\tSOURCE")
	for _, s := range r.Suppressed {
		// A VEX document's words are its author's: no control character reaches the terminal.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", printable(s.ID), printable(s.Package), printable(s.InstalledVersion),
			printable(s.Status), printable(s.Justification), printable(s.Source))
	}
	return tw.Flush()
}
