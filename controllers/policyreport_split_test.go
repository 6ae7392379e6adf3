package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	wgpolicyv1alpha2 "github.com/imageguard/imageguard/api/wgpolicyk8s/v1alpha2"
	"github.com/imageguard/imageguard/internal/scheme"
)

func policyResults(n int) []wgpolicyv1alpha2.PolicyReportResult {
	out := make([]wgpolicyv1alpha2.PolicyReportResult, n)
	for i := range out {
		out[i] = wgpolicyv1alpha2.PolicyReportResult{
			Source: "imageguard", Policy: "p", Rule: "vulnerabilities", Result: wgpolicyv1alpha2.ResultFail,
			Description: fmt.Sprintf("workload %04d: 1 critical (max 0)", i),
		}
	}
	return out
}

// TestPolicyReportsAreSplitUnderTheirBound writes 300 results with a 4 KiB bound, in each format:
// they go, in order, to imageguard, imageguard-2, ..., each under the bound; when fewer results
// remain, the parts no longer needed are deleted and the others rewritten.
func TestPolicyReportsAreSplitUnderTheirBound(t *testing.T) {
	for _, format := range []ReportFormat{FormatWGPolicy, FormatOpenReports} {
		t.Run(string(format), func(t *testing.T) {
			g := NewWithT(t)
			ctx := context.Background()
			c := fake.NewClientBuilder().WithScheme(scheme.New()).Build()
			r := &PolicyReportReconciler{Client: c, Reader: c, MaxBytes: 4 << 10}
			kind := reportKinds[format]
			parts := func() []client.Object {
				list := kind.newList()
				g.Expect(c.List(ctx, list, client.InNamespace("ns"))).To(Succeed())
				byName := map[string]client.Object{}
				items, err := meta.ExtractList(list)
				g.Expect(err).NotTo(HaveOccurred())
				for _, item := range items {
					rep := item.(client.Object)
					byName[rep.GetName()] = rep
				}
				var out []client.Object
				for i := 1; i <= len(byName); i++ {
					rep, ok := byName[policyReportName(i)]
					g.Expect(ok).To(BeTrue(), "part %d of %d", i, len(byName))
					out = append(out, rep)
				}
				return out
			}
			check := func(results []wgpolicyv1alpha2.PolicyReportResult) int {
				var all []wgpolicyv1alpha2.PolicyReportResult
				reps := parts()
				for _, rep := range reps {
					got := kind.results(rep)
					raw, err := json.Marshal(got)
					g.Expect(err).NotTo(HaveOccurred())
					g.Expect(len(raw)).To(BeNumerically("<=", r.MaxBytes))
					g.Expect(rep.GetLabels()).To(Equal(managedByLabel))
					all = append(all, got...)
				}
				g.Expect(all).To(Equal(results))
				return len(reps)
			}

			results := policyResults(300)
			g.Expect(r.writeAll(ctx, kind, "ns", results)).To(Succeed())
			n := check(results)
			g.Expect(n).To(BeNumerically(">", 5))

			g.Expect(r.writeAll(ctx, kind, "ns", results[:40])).To(Succeed())
			g.Expect(check(results[:40])).To(BeNumerically("<", n))

			g.Expect(r.writeAll(ctx, kind, "ns", nil)).To(Succeed())
			g.Expect(parts()).To(BeEmpty())
		})
	}
}
