// Package scanner analyses images with Trivy, used as a library, and matches the kept package
// inventories against the vulnerability DB. It knows nothing of controller-runtime.
package scanner
