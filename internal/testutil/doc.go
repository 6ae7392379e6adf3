// Package testutil holds test fixtures shared by the packages of this repository: an in-process
// OCI registry with request counters and fault injection, real container images built in memory
// (Alpine, Debian, npm, Go binary, and hostile layers), and a real Trivy vulnerability DB with its
// OCI artifact.
//
// The fixtures are real rather than mocked so that tests exercise Trivy's own analyzers and
// detectors: an image that Trivy cannot analyse, or a DB that Trivy cannot read, fails here first.
//
// The package deliberately imports only trivy-db, go-containerregistry, bbolt, sigs.k8s.io/yaml and
// the standard library, never github.com/aquasecurity/trivy itself, so that packages which only need
// a registry or an image do not pay for compiling Trivy.
package testutil
