package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/signature"
)

// verifyOptions are the flags of `imageguard verify`: the authorities of a signature rule.
type verifyOptions struct {
	Image                  string
	Keys                   []string
	Identity, IdentityRE   string
	Issuer, IssuerRE       string
	TrustedRoot            string
	RequireTransparencyLog bool
	RequireSignedTimestamp bool
	Output                 string
	Timeout                time.Duration
	Registry               registryOptions
}

func parseVerifyFlags(args []string, output io.Writer) (*verifyOptions, error) {
	o := &verifyOptions{}
	fs := pflag.NewFlagSet("imageguard verify", pflag.ContinueOnError)
	fs.SetOutput(output)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(output, "Usage: imageguard verify IMAGE (--key FILE | --certificate-identity[-regexp] ... --certificate-oidc-issuer[-regexp] ... --trusted-root FILE) [flags]\n\n"+
			"Verifies the image's cosign signatures (signature tag and Sigstore bundle referrers) as a policy's\nsignature rule does, and prints the verdict. Exit code 0: verified; 1: not verified; 2: bad usage.\n\nFlags:\n%s", fs.FlagUsages())
	}
	fs.StringSliceVar(&o.Keys, "key", nil, "PEM public key file (cosign.pub) trusted to sign; repeat or comma-separate for several.")
	fs.StringVar(&o.Identity, "certificate-identity", "", "Keyless: the certificate's subject (email or URI), exactly.")
	fs.StringVar(&o.IdentityRE, "certificate-identity-regexp", "", "Keyless: a regular expression the whole subject must match.")
	fs.StringVar(&o.Issuer, "certificate-oidc-issuer", "", "Keyless: the certificate's OIDC issuer, exactly.")
	fs.StringVar(&o.IssuerRE, "certificate-oidc-issuer-regexp", "", "Keyless: a regular expression the whole OIDC issuer must match.")
	fs.StringVar(&o.TrustedRoot, "trusted-root", "", "Keyless: the Sigstore trusted_root.json (Fulcio CAs, Rekor and CT log keys, timestamp authorities).")
	fs.BoolVar(&o.RequireTransparencyLog, "require-transparency-log", true, "Keyless: require the signature's transparency-log entry.")
	fs.BoolVar(&o.RequireSignedTimestamp, "require-signed-timestamp", true, "Keyless: require an RFC 3161 timestamp of the trusted root's timestamp authorities.")
	fs.StringVarP(&o.Output, "output", "o", "table", "Output format: table or json.")
	fs.DurationVar(&o.Timeout, "timeout", signature.DefaultTimeout, "Time limit of the verification.")
	o.Registry.bindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return nil, errors.New("verify takes exactly one image reference")
	}
	o.Image = fs.Arg(0)
	keyless := o.Identity != "" || o.IdentityRE != "" || o.Issuer != "" || o.IssuerRE != "" || o.TrustedRoot != ""
	switch {
	case len(o.Keys) == 0 && !keyless:
		return nil, errors.New("name a --key, or a keyless identity and --trusted-root")
	case keyless && ((o.Identity == "") == (o.IdentityRE == "") || (o.Issuer == "") == (o.IssuerRE == "") || o.TrustedRoot == ""):
		return nil, errors.New("keyless verification takes one of --certificate-identity and --certificate-identity-regexp, one of --certificate-oidc-issuer and --certificate-oidc-issuer-regexp, and --trusted-root")
	case o.Output != "table" && o.Output != "json":
		return nil, fmt.Errorf("unknown output format %q: use table or json", o.Output)
	}
	return o, nil
}

// rule is the signature rule the flags describe, and the reader that serves its trust root.
func (o *verifyOptions) rule() (securityv1alpha1.SignatureRule, client.Reader, error) {
	r := securityv1alpha1.SignatureRule{Required: true, RequireTransparencyLog: &o.RequireTransparencyLog, RequireSignedTimestamp: &o.RequireSignedTimestamp}
	for _, f := range o.Keys {
		data, err := os.ReadFile(f) //nolint:gosec // the user's own file
		if err != nil {
			return r, nil, err
		}
		r.Keys = append(r.Keys, securityv1alpha1.SignatureKey{PublicKey: string(data)})
	}
	files := fileReader{}
	if o.TrustedRoot != "" {
		data, err := os.ReadFile(o.TrustedRoot)
		if err != nil {
			return r, nil, err
		}
		files["trusted-root"] = data
		r.Keyless = []securityv1alpha1.KeylessIdentity{{Issuer: o.Issuer, IssuerRegExp: o.IssuerRE, Subject: o.Identity, SubjectRegExp: o.IdentityRE}}
		r.TrustRoot = &securityv1alpha1.TrustRootSource{Kind: securityv1alpha1.TrustRootConfigMap, Name: "trusted-root", Key: "trusted_root.json"}
	}
	return r, files, nil
}

// fileReader serves the trusted root file as the ConfigMap the rule names; nothing else exists.
type fileReader map[string][]byte

func (f fileReader) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	cm, ok := obj.(*corev1.ConfigMap)
	if data, found := f[key.Name]; ok && found {
		cm.Data = map[string]string{"trusted_root.json": string(data)}
		return nil
	}
	return apierrors.NewNotFound(schema.GroupResource{Resource: "files"}, key.Name)
}

func (f fileReader) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("not a cluster")
}

// verifyReport is what `imageguard verify` prints.
type verifyReport struct {
	Image    string                    `json:"image"`
	Digest   string                    `json:"digest"`
	Verified bool                      `json:"verified"`
	Reason   string                    `json:"reason,omitempty"`
	Message  string                    `json:"message"`
	SignedBy []securityv1alpha1.Signer `json:"signedBy,omitempty"`
	Checked  time.Time                 `json:"checkedAt"`
}

func runVerify(args []string, stdout, stderr io.Writer) int {
	o, err := parseVerifyFlags(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "imageguard verify: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	report, err := verifyImage(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "imageguard verify: %v\n", err)
		return 2
	}
	if o.Output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return 1
		}
	} else {
		fmt.Fprintf(stdout, "%s@%s\n", report.Image, report.Digest)
		if report.Verified {
			fmt.Fprintf(stdout, "Verified: %s\n", report.Message)
			for _, s := range report.SignedBy {
				fmt.Fprintf(stdout, "  signed by %s (%s, %s)\n", s.Identity, s.Authority, s.Source)
			}
		} else {
			fmt.Fprintf(stdout, "Not verified: %s: %s\n", report.Reason, report.Message)
		}
	}
	if !report.Verified {
		return 1
	}
	return 0
}

// verifyImage resolves o.Image to its digest (with the docker config's credentials) and verifies
// its signatures as a policy with o's rule would.
func verifyImage(ctx context.Context, o *verifyOptions) (*verifyReport, error) {
	rule, files, err := o.rule()
	if err != nil {
		return nil, err
	}
	compiled, err := policy.Compile(securityv1alpha1.PolicyRules{Signatures: &rule})
	if err != nil {
		return nil, err
	}
	reg := o.Registry.client()
	ref, err := reg.ParseReference(o.Image)
	if err != nil {
		return nil, err
	}
	digest, err := reg.ResolveDigest(ctx, o.Image, authn.DefaultKeychain)
	if err != nil {
		return nil, err
	}
	v := &signature.Verifier{Registry: reg, Reader: files}
	repo := ref.Context().Name()
	if _, ok := ref.(name.Digest); !ok {
		repo = strings.TrimSuffix(repo, ":"+ref.Identifier())
	}
	verdict := v.Verify(ctx, compiled.Signatures(), repo, digest, authn.DefaultKeychain)
	return &verifyReport{Image: repo, Digest: digest, Verified: verdict.Verified, Reason: verdict.Reason,
		Message: verdict.Message, SignedBy: verdict.Signers, Checked: verdict.CheckedAt}, nil
}
