package v1alpha1_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/imageguard/imageguard/internal/testenv"
)

// env is the control plane shared by the tests of this package: the CRDs under test are the ones
// `make manifests` generated into config/crd/bases.
var env *testenv.Env

func TestMain(m *testing.M) {
	var err error
	env, err = testenv.Start(testenv.Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot start the control plane: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stopping the control plane: %v\n", err)
	}
	os.Exit(code)
}
