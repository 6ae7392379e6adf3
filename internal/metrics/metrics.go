// Package metrics defines ImageGuard's Prometheus metrics (prefix imageguard_), registered with
// controller-runtime's registry so the manager's metrics endpoint serves them.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Kinds of scan work.
const (
	KindAnalysis = "analysis"
	KindMatch    = "match"
)

var (
	// ImageVulnerabilities counts the findings of each report by severity.
	ImageVulnerabilities = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "imageguard_image_vulnerabilities",
		Help: "Vulnerabilities of the image of an ImageScanReport, by severity.",
	}, []string{"namespace", "report", "severity"})

	// ScansTotal counts analyses (image pulls) and matches (DB lookups) by result.
	ScansTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imageguard_scans_total",
		Help: "Image analyses and vulnerability matches, by kind (analysis, match) and result (success or the error kind).",
	}, []string{"kind", "result"})

	// ScanDuration observes how long analyses and matches take.
	ScanDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "imageguard_scan_duration_seconds",
		Help:    "Duration of image analyses and vulnerability matches.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
	}, []string{"kind"})

	// WorkloadCompliant is 1 for a workload that complies with a policy, 0 for one that does not.
	WorkloadCompliant = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "imageguard_workload_compliant",
		Help: "Whether a workload complies with a policy (1) or not (0).",
	}, []string{"policy", "namespace", "kind", "name"})

	// AdmissionDecisions counts admission answers by endpoint (validate, imagepolicy) and decision
	// (allowed, warned, denied, exempt, error).
	AdmissionDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imageguard_admission_decisions_total",
		Help: "Admission decisions, by endpoint (validate, imagepolicy) and decision (allowed, warned, denied, exempt, error).",
	}, []string{"endpoint", "decision"})

	// AdmissionDuration observes how long an admission decision takes, from the decoded request to
	// the answer.
	AdmissionDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "imageguard_admission_duration_seconds",
		Help:    "Time to decide an admission request, by endpoint.",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5},
	}, []string{"endpoint"})

	// NewVulnerabilities counts the findings a re-match (or re-analysis) added to reports, by
	// severity: what a DB update brought.
	NewVulnerabilities = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imageguard_new_vulnerabilities_total",
		Help: "Findings that appeared in reports when they were matched again (a new DB, a new analysis), by severity.",
	}, []string{"severity"})

	// ScansInFlight is the number of reports being scanned now.
	ScansInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "imageguard_scans_in_flight",
		Help: "Reports being scanned or matched right now (the work queue itself is workqueue_depth{name=\"imagescanreport\"}).",
	})
)

func init() {
	ctrlmetrics.Registry.MustRegister(ImageVulnerabilities, ScansTotal, ScanDuration, ScansInFlight, WorkloadCompliant,
		AdmissionDecisions, AdmissionDuration, NewVulnerabilities)
}

// dbAges are the gauges RegisterDBAge registered last, by metric name.
var dbAges = map[string]prometheus.Collector{}

// RegisterDBAge exposes the build time of the vulnerability DB in use, read from info at scrape
// time (0 before any DB is loaded). Registering again (a manager made anew in the same process)
// replaces the earlier one.
func RegisterDBAge(info func() (time.Time, bool)) error {
	return registerDBAge("imageguard_vulnerability_db_updated_timestamp_seconds",
		"When the vulnerability DB in use was built, in seconds since the epoch.", info)
}

// RegisterJavaDBAge is RegisterDBAge for the Java DB (0 while none is loaded: an on-demand Java DB
// is fetched when the first image with Java archives is analysed).
func RegisterJavaDBAge(info func() (time.Time, bool)) error {
	return registerDBAge("imageguard_java_db_updated_timestamp_seconds",
		"When the Java DB in use was built, in seconds since the epoch; 0 while none is loaded.", info)
}

func registerDBAge(name, help string, info func() (time.Time, bool)) error {
	gauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
		t, ok := info()
		if !ok {
			return 0
		}
		return float64(t.Unix())
	})
	if old := dbAges[name]; old != nil {
		ctrlmetrics.Registry.Unregister(old)
	}
	dbAges[name] = gauge
	return ctrlmetrics.Registry.Register(gauge)
}

// Observe records one scan step of kind that took since start and ended with result.
func Observe(kind, result string, start time.Time) {
	ScansTotal.WithLabelValues(kind, result).Inc()
	ScanDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
}

// LayerCache is what the layer cache metrics read at scrape time.
type LayerCache struct {
	Hits, Misses, Corrupt, Evictions float64
	Bytes, Entries, MaxBytes         float64
}

// layerCache holds the collectors RegisterLayerCache registered last.
var layerCache []prometheus.Collector

// RegisterLayerCache exposes the layer cache's counters and size, read from stats at scrape
// time. Registering again (a manager made anew in the same process) replaces the earlier ones.
func RegisterLayerCache(stats func() LayerCache) error {
	for _, c := range layerCache {
		ctrlmetrics.Registry.Unregister(c)
	}
	layerCache = nil
	counter := func(name, help string, read func(LayerCache) float64) {
		layerCache = append(layerCache, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return read(stats()) }))
	}
	gauge := func(name, help string, read func(LayerCache) float64) {
		layerCache = append(layerCache, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
			func() float64 { return read(stats()) }))
	}
	counter("imageguard_layer_cache_hits_total", "Image layers whose analysis was found in the layer cache (not pulled).",
		func(s LayerCache) float64 { return s.Hits })
	counter("imageguard_layer_cache_misses_total", "Image layers pulled and analysed, and kept in the layer cache.",
		func(s LayerCache) float64 { return s.Misses })
	counter("imageguard_layer_cache_corrupt_total", "Layer cache entries that failed their check, removed and analysed again.",
		func(s LayerCache) float64 { return s.Corrupt })
	counter("imageguard_layer_cache_evictions_total", "Layer cache entries removed, least recently used first, to stay under --layer-cache-max-bytes.",
		func(s LayerCache) float64 { return s.Evictions })
	gauge("imageguard_layer_cache_bytes", "Bytes the layer cache holds.", func(s LayerCache) float64 { return s.Bytes })
	gauge("imageguard_layer_cache_entries", "Layers the layer cache holds.", func(s LayerCache) float64 { return s.Entries })
	gauge("imageguard_layer_cache_max_bytes", "The layer cache's bound (--layer-cache-max-bytes).", func(s LayerCache) float64 { return s.MaxBytes })
	for _, c := range layerCache {
		if err := ctrlmetrics.Registry.Register(c); err != nil {
			return err
		}
	}
	return nil
}
