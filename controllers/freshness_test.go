package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/scheme"
)

// TestFreshnessKnowsWhichDBAReportWasMatchedAgainst judges, from the DB object, the controller's
// memory and the report, which DB a quiet report's findings come from, and never infers a newer
// one than it was matched against.
func TestFreshnessKnowsWhichDBAReportWasMatchedAgainst(t *testing.T) {
	now := time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(now)
	at := func(ago time.Duration) *metav1.Time { t := metav1.NewTime(now.Add(-ago)); return &t }
	const inUse, previous, old = "sha256:in-use", "sha256:previous", "sha256:old"
	vdb := func(ready metav1.ConditionStatus, reason string, builtAgo time.Duration, last *securityv1alpha1.CompletedRematch) *securityv1alpha1.VulnerabilityDatabase {
		return &securityv1alpha1.VulnerabilityDatabase{
			ObjectMeta: metav1.ObjectMeta{Name: securityv1alpha1.VulnerabilityDatabaseName},
			Status: securityv1alpha1.VulnerabilityDatabaseStatus{
				Digest: inUse, BuiltAt: at(builtAgo), Rematch: &securityv1alpha1.Rematch{LastCompleted: last},
				Conditions: []metav1.Condition{{Type: securityv1alpha1.ConditionReady, Status: ready, Reason: reason}},
			},
		}
	}
	// A quiet report: Scanned, its status two DBs behind (not refreshed yet).
	report := func(ns string, scanned metav1.ConditionStatus) *securityv1alpha1.ImageScanReport {
		return &securityv1alpha1.ImageScanReport{
			ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns, UID: "u1", Generation: 1},
			Status: securityv1alpha1.ImageScanReportStatus{
				ObservedGeneration: 1, Summary: &securityv1alpha1.VulnerabilitySummary{},
				VulnerabilityDB: &securityv1alpha1.VulnerabilityDB{Digest: old, UpdatedAt: at(20 * time.Hour)},
				LastScanTime:    at(20 * time.Hour),
				Conditions:      []metav1.Condition{{Type: securityv1alpha1.ConditionScanned, Status: scanned, Reason: "x"}},
			},
		}
	}
	unwritten := func(r *securityv1alpha1.ImageScanReport) *securityv1alpha1.ImageScanReport {
		r.Status.LastScanTime, r.Status.VulnerabilityDB.UpdatedAt = at(40*24*time.Hour), at(40*24*time.Hour)
		return r
	}
	excluded := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "skipped", Labels: map[string]string{"imageguard.dev/exclude": "true"}}}
	tests := map[string]struct {
		vdb       *securityv1alpha1.VulnerabilityDatabase
		report    *securityv1alpha1.ImageScanReport
		remember  *scanner.DBInfo
		wantBuilt *metav1.Time
		wantInUse bool
		wantStale bool
	}{
		"re-match done: matched against the DB in use": {
			vdb: vdb(metav1.ConditionTrue, securityv1alpha1.ReasonCurrent, 2*time.Hour, nil), report: report("shop", metav1.ConditionTrue),
			wantBuilt: at(2 * time.Hour), wantInUse: true,
		},
		"re-match running: matched against the last completed one": {
			vdb:    vdb(metav1.ConditionFalse, securityv1alpha1.ReasonRematching, time.Hour, &securityv1alpha1.CompletedRematch{Digest: previous, BuiltAt: at(7 * time.Hour)}),
			report: report("shop", metav1.ConditionTrue), wantBuilt: at(7 * time.Hour),
		},
		"re-match running, none completed before: the status": {
			vdb: vdb(metav1.ConditionFalse, securityv1alpha1.ReasonRematching, time.Hour, nil), report: report("shop", metav1.ConditionTrue), wantBuilt: at(20 * time.Hour),
		},
		"the last match failed: the status, never the DB in use": {
			vdb: vdb(metav1.ConditionTrue, securityv1alpha1.ReasonCurrent, 2*time.Hour, nil), report: report("shop", metav1.ConditionFalse), wantBuilt: at(20 * time.Hour),
		},
		"an excluded namespace is never re-matched: the status": {
			vdb: vdb(metav1.ConditionTrue, securityv1alpha1.ReasonCurrent, 2*time.Hour, nil), report: report("skipped", metav1.ConditionTrue), wantBuilt: at(20 * time.Hour),
		},
		"the controller remembers an older DB: that one": {
			vdb: vdb(metav1.ConditionTrue, securityv1alpha1.ReasonCurrent, 2*time.Hour, nil), report: report("shop", metav1.ConditionTrue),
			remember: &scanner.DBInfo{Digest: previous, UpdatedAt: now.Add(-9 * time.Hour)}, wantBuilt: at(9 * time.Hour),
		},
		"not written for longer than the refresh interval (its namespace was excluded until now): the status": {
			vdb: vdb(metav1.ConditionTrue, securityv1alpha1.ReasonCurrent, 2*time.Hour, nil), report: unwritten(report("shop", metav1.ConditionTrue)),
			wantBuilt: at(40 * 24 * time.Hour),
		},
		"the DB in use is stale: every report says so": {
			vdb: vdb(metav1.ConditionTrue, securityv1alpha1.ReasonCurrent, 80*time.Hour, nil), report: report("skipped", metav1.ConditionTrue),
			wantBuilt: at(20 * time.Hour), wantStale: true,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(tt.vdb, excluded,
				&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}).Build()
			matches := NewMatches()
			if tt.remember != nil {
				matches.Matched(types.NamespacedName{Namespace: tt.report.Namespace, Name: tt.report.Name}, tt.report.UID, *tt.remember, nil)
			}
			out := policy.ReportOf(tt.report)
			Freshness(c, matches, []string{"kube-system"}, 72*time.Hour, 24*time.Hour, clk)(tt.report, out)
			g.Expect(out.MatchedDB.BuiltAt).To(BeTemporally("==", tt.wantBuilt.Time))
			g.Expect(out.MatchedDB.InUse).To(Equal(tt.wantInUse))
			g.Expect(out.MatchedDB.Stale != "").To(Equal(tt.wantStale), out.MatchedDB.Stale)
		})
	}
}
