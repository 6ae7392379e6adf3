// Command scalemodel predicts ImageGuard's time to cover a cluster and its memory from the costs
// measured by the scale benchmarks (docs/scaling.md), for one replica and for the sharded design
// of docs/scaling.md (digests spread over replicas by consistent hashing). Every cost is a flag, so
// new measurements give new predictions:
//
//	go run ./hack/scalemodel -pods 100000 -digests 10000 -replicas 1,3,10
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
)

// costs are the measured unit costs; the defaults are the figures of docs/scaling.md.
type costs struct {
	// analysisPerImage is the CPU seconds of one analysis whose layers are all in the layer cache
	// but its own (config, one small layer, Trivy's analyzers, the merge, the kept inventory).
	analysisPerImage float64
	// analysisPerLayer is the CPU seconds of analysing one distinct layer (pull and walk).
	analysisPerLayer float64
	// rematchPerImage is the CPU seconds of one re-match of a ~90-package inventory on the
	// real-scale DB.
	rematchPerImage float64
	// writesPerReport is the API writes until a new report is Ready; writesPerChange those of a
	// report whose findings a DB update changed.
	writesPerReport, writesPerChange float64
	// qps is one replica's API write rate (--kube-api-qps).
	qps float64
	// cores is the CPU one replica may use for analyses (--scan-concurrency, bounded by its
	// cores).
	cores float64
	// baseMiB, perPodKiB and perReportKiB model a replica's memory: its own, and what each pod
	// and each report it watches take in its informer caches.
	baseMiB, perPodKiB, perReportKiB float64
}

type cluster struct {
	pods, digests, reports, distinctLayers int
	// changed is the fraction of reports a DB update changes.
	changed float64
}

type prediction struct {
	replicas               int
	analysisS, writesS     float64
	coverS, rematchS       float64
	memoryMiB              float64
	coverBound, rematchBnd string
}

func predict(c costs, k cluster, replicas int) prediction {
	r := float64(replicas)
	// Digests are sharded: each replica analyses its share once, and each shared layer once in
	// its own layer cache (a replica's cache misses each base once).
	layersPerReplica := math.Min(float64(k.distinctLayers), float64(k.distinctLayers-k.digests)+float64(k.digests)/r)
	analysis := (float64(k.digests)/r*c.analysisPerImage + layersPerReplica*c.analysisPerLayer) / c.cores
	writes := float64(k.reports) / r * c.writesPerReport / c.qps
	p := prediction{replicas: replicas, analysisS: analysis, writesS: writes}
	p.coverS, p.coverBound = math.Max(analysis, writes), "analysis (CPU)"
	if writes > analysis {
		p.coverBound = "API writes (QPS)"
	}
	rematchCPU := float64(k.reports) / r * c.rematchPerImage / c.cores
	rematchWrites := float64(k.reports) * k.changed / r * c.writesPerChange / c.qps
	p.rematchS, p.rematchBnd = math.Max(rematchCPU, rematchWrites), "re-match (CPU)"
	if rematchWrites > rematchCPU {
		p.rematchBnd = "API writes (QPS)"
	}
	// Every replica watches every pod (admission answers from any of them); reports are watched
	// by the replica that owns them.
	p.memoryMiB = c.baseMiB + float64(k.pods)*c.perPodKiB/1024 + float64(k.reports)/r*c.perReportKiB/1024
	return p
}

func main() {
	var c costs
	var k cluster
	var replicas string
	flag.IntVar(&k.pods, "pods", 100_000, "pods in the cluster")
	flag.IntVar(&k.digests, "digests", 10_000, "distinct image digests")
	flag.IntVar(&k.reports, "reports", 0, "reports (namespace x digest pairs); 0: 4.5 per 10 pods, as in BenchmarkClusterScale10000Pods")
	flag.IntVar(&k.distinctLayers, "distinct-layers", 0, "distinct layers; 0: one per digest plus 40 base layers")
	flag.Float64Var(&k.changed, "changed", 0.75, "fraction of reports a DB update changes")
	flag.StringVar(&replicas, "replicas", "1,3,10", "replica counts to predict for (comma list)")
	flag.Float64Var(&c.analysisPerImage, "analysis-per-image", 0.0061, "CPU seconds of an analysis whose base layers are cached")
	flag.Float64Var(&c.analysisPerLayer, "analysis-per-layer", 0.0106, "CPU seconds of analysing one distinct layer")
	flag.Float64Var(&c.rematchPerImage, "rematch-per-image", 0.0006, "CPU seconds of one re-match on the real-scale DB")
	flag.Float64Var(&c.writesPerReport, "writes-per-report", 3.07, "API writes until a new report is Ready")
	flag.Float64Var(&c.writesPerChange, "writes-per-change", 1.0, "API writes of a report a DB update changed")
	flag.Float64Var(&c.qps, "qps", 50, "API writes per second of one replica (--kube-api-qps)")
	flag.Float64Var(&c.cores, "cores", 2, "cores one replica analyses on")
	flag.Float64Var(&c.baseMiB, "base-mib", 200, "a replica's own memory, DB pages included")
	flag.Float64Var(&c.perPodKiB, "per-pod-kib", 25, "memory per pod watched")
	flag.Float64Var(&c.perReportKiB, "per-report-kib", 6.0, "memory per report watched")
	flag.Parse()
	if k.reports == 0 {
		k.reports = k.pods * 45 / 100
	}
	if k.distinctLayers == 0 {
		k.distinctLayers = k.digests + 40
	}
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintf(w, "%d pods, %d digests, %d reports, %d distinct layers\n\n", k.pods, k.digests, k.reports, k.distinctLayers)
	fmt.Fprintln(w, "replicas\tanalysis\tAPI writes\tall covered\tbound by\tDB update\tbound by\tmemory per replica")
	for _, s := range strings.Split(replicas, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "scalemodel: bad replica count %q\n", s)
			os.Exit(2)
		}
		p := predict(c, k, n)
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f MiB\n", p.replicas, dur(p.analysisS), dur(p.writesS), dur(p.coverS), p.coverBound, dur(p.rematchS), p.rematchBnd, p.memoryMiB)
	}
	_ = w.Flush()
}

func dur(s float64) string {
	switch {
	case s >= 3600:
		return fmt.Sprintf("%.1f h", s/3600)
	case s >= 60:
		return fmt.Sprintf("%.1f min", s/60)
	}
	return fmt.Sprintf("%.0f s", s)
}
