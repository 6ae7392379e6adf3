package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/pflag"

	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/scanner"
)

// sbomOptions are the flags of `imageguard sbom`.
type sbomOptions struct {
	imageOptions
	Output string
}

func parseSBOMFlags(args []string, output io.Writer) (*sbomOptions, error) {
	opts := &sbomOptions{}
	fs := pflag.NewFlagSet("imageguard sbom", pflag.ContinueOnError)
	fs.SetOutput(output)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(output, "Usage: imageguard sbom IMAGE -o cyclonedx|spdx-json|spdx [flags]\n\n"+
			"Writes the image's SBOM from its package inventory with Trivy's SBOM writers: the inventory an\n"+
			"earlier scan kept under --cache-dir when there is one (no second analysis), else a new analysis.\n"+
			"No vulnerability DB is read.\n\nFlags:\n%s", fs.FlagUsages())
	}
	fs.StringVarP(&opts.Output, "output", "o", "cyclonedx", "SBOM format: "+strings.Join(scanner.SBOMFormats, ", ")+" (SPDX tag-value), as Trivy names them.")
	opts.bindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := opts.parse(fs); err != nil {
		return nil, err
	}
	if !slices.Contains(scanner.SBOMFormats, opts.Output) {
		return nil, fmt.Errorf("unknown SBOM format %q: use %s", opts.Output, strings.Join(scanner.SBOMFormats, ", "))
	}
	return opts, nil
}

func runSBOM(args []string, stdout, stderr io.Writer) int {
	opts, err := parseSBOMFlags(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "imageguard sbom: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := writeSBOM(ctx, opts, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "imageguard sbom: %v\n", err)
		return 1
	}
	return 0
}

// noVulnerabilityDB is the DB of a scanner that only lists packages.
type noVulnerabilityDB struct{}

func (noVulnerabilityDB) View(func(scanner.DBInfo) error) error {
	return errors.New("no vulnerability DB: the sbom command reads none")
}

func writeSBOM(ctx context.Context, opts *sbomOptions, stdout, stderr io.Writer) error {
	session, err := openImage(ctx, &opts.imageOptions, func(*registry.Client, authn.Keychain) (scanner.DB, error) {
		return noVulnerabilityDB{}, nil
	}, stderr)
	if err != nil {
		return err
	}
	defer session.close()
	var inv *scanner.Inventory
	err = session.withJavaDB(ctx, func() (int, error) {
		var err error
		if inv, _, err = session.scanner.Inventory(ctx, session.ref); err != nil {
			return 0, err
		}
		return inv.JavaArchives, nil
	})
	if err != nil {
		return err
	}
	if inv.JavaArchives > 0 {
		// An SBOM has no field to say it lacks packages: none is written rather than one that
		// silently does.
		return fmt.Errorf("%d Java archives (jar, war, ear, par) could not be analysed without a Java DB (--java-db-repository, --java-db-path); no SBOM is written without their packages", inv.JavaArchives)
	}
	return scanner.WriteSBOM(ctx, stdout, inv, session.name, opts.Output)
}
