package controllers

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
)

// TestFailedListingsBackOff: a listing that failed in part is retried after the retry interval,
// doubled with each such listing in a row, never past the scan's interval; a complete listing
// waits the interval.
func TestFailedListingsBackOff(t *testing.T) {
	r := &RegistryScanReconciler{RetryInterval: time.Minute}
	scan := &securityv1alpha1.RegistryScan{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s"},
		Spec:       securityv1alpha1.RegistryScanSpec{Interval: &metav1.Duration{Duration: time.Hour}},
	}
	if got := r.sinceLastListing(scan); got != time.Hour {
		t.Errorf("after a complete listing: %s, want the interval", got)
	}
	scan.Status.Failures = []securityv1alpha1.RegistryScanFailure{{Repository: "r.example.com/a", Reason: "Timeout"}}
	for inARow, want := range map[int]time.Duration{1: time.Minute, 2: 2 * time.Minute, 4: 8 * time.Minute, 7: time.Hour, 50: time.Hour} {
		r.listings.Store(types.NamespacedName{Namespace: "ns", Name: "s"}, listingState{failed: 1, failedInARow: inARow})
		if got := r.sinceLastListing(scan); got != want {
			t.Errorf("after %d failed listings in a row: %s, want %s", inARow, got, want)
		}
	}
	// A failure of a digest's scan is no listing's: the interval.
	scan.Status.Failures[0].Digest = "sha256:aa"
	if got := r.sinceLastListing(scan); got != time.Hour {
		t.Errorf("after a scan failure only: %s, want the interval", got)
	}
}
