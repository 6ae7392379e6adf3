package controllers

import (
	"context"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/metrics"
	"github.com/imageguard/imageguard/internal/registry"
	"github.com/imageguard/imageguard/internal/registryscan"
	"github.com/imageguard/imageguard/internal/scanner"
	"github.com/imageguard/imageguard/internal/signature"
	"github.com/imageguard/imageguard/internal/vap"
	"github.com/imageguard/imageguard/internal/workload"
)

// Options configure the reconcilers.
type Options struct {
	Registry *registry.Client
	Scanner  ImageScanner
	DB       VulnerabilityDB
	// JavaDB is the Java DB the scanner's jar analyzer reads; nil: none.
	JavaDB             JavaDB
	ScanConcurrency    int
	ReportMaxBytes     int
	ReportRetention    time.Duration
	RescanInterval     time.Duration
	ExcludedNamespaces []string
	// PodConcurrency is how many namespaces the pod controller reconciles at once; 0 means
	// DefaultPodConcurrency.
	PodConcurrency int
	// ReconcileTimeout bounds one reconcile of every controller but the report controller, whose
	// bound is ScanTimeout plus ReconcileTimeout; 0 means DefaultReconcileTimeout.
	ReconcileTimeout time.Duration
	// ScanTimeout is the scanner's bound of one analysis.
	ScanTimeout time.Duration
	// Admission, when set, also serves the admission endpoints.
	Admission *AdmissionOptions
	// AdmissionPolicies, when set, keeps a ValidatingAdmissionPolicy and binding generated from
	// each policy that enforces or warns (internal/vap), with the namespaces and users admission
	// leaves alone; nil generates none and removes those generated before.
	AdmissionPolicies *vap.Options
	// Clock is the time every reconciler and admission reads; nil is the real clock.
	Clock clock.PassiveClock
	// DBMaxAge is how old the DB in use may be before it is Stale (and every freshness rule
	// fails); 0 means DefaultDBMaxAge.
	DBMaxAge time.Duration
	// PolicyReports are the formats of policy reports written (--policy-reports); nil means
	// wgpolicyk8s only, an empty non-nil list none.
	PolicyReports []ReportFormat
	// ReportRefreshInterval is how often at most a report whose findings a new DB left unchanged
	// is written to bring its DB and scan time up to date; 0 means DefaultReportRefreshInterval.
	ReportRefreshInterval time.Duration
	// SignatureRecheckInterval is how long a signature verdict stands before the signatures are
	// read and verified again; 0 means signature.DefaultRecheckInterval.
	SignatureRecheckInterval time.Duration
	// Namespace is the controller's: a ClusterImagePolicy's signature keys and trust root are read
	// there when it does not say.
	Namespace string
	// RegistryScanRequestsPerSecond paces the registry scans' requests (pages, tag lookups) to
	// each registry; 0 means registryscan.DefaultPagesPerSecond.
	RegistryScanRequestsPerSecond float64
	// RegistryScanRetry is when a registry listing that failed in part is tried again; 0 means
	// DefaultRegistryScanRetry.
	RegistryScanRetry time.Duration
	// ReceiverAddress, when set, serves registry push notifications there (RegistryReceiver).
	ReceiverAddress string
}

func (o Options) policyReports() []ReportFormat {
	if o.PolicyReports == nil {
		return []ReportFormat{FormatWGPolicy}
	}
	return o.PolicyReports
}

// DefaultPodConcurrency is how many namespaces the pod controller reconciles at once.
const DefaultPodConcurrency = 4

// DefaultReconcileTimeout bounds one reconcile (plus the scan timeout for reports).
const DefaultReconcileTimeout = 2 * time.Minute

// Setup adds ImageGuard's reconcilers (and, with opts.Admission, the admission endpoints) to mgr.
// They share one Gatherer over the manager's cache.
func Setup(mgr ctrl.Manager, opts Options) error {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.PodConcurrency <= 0 {
		opts.PodConcurrency = DefaultPodConcurrency
	}
	if opts.ReconcileTimeout <= 0 {
		opts.ReconcileTimeout = DefaultReconcileTimeout
	}
	if opts.DBMaxAge <= 0 {
		opts.DBMaxAge = DefaultDBMaxAge
	}
	if opts.ReportRefreshInterval <= 0 {
		opts.ReportRefreshInterval = DefaultReportRefreshInterval
	}
	if err := workload.IndexReports(context.Background(), mgr.GetFieldIndexer()); err != nil {
		return err
	}
	// Every replica reads the DB object (freshness, in admission too), not only the leader's
	// controllers that watch it.
	if _, err := mgr.GetCache().GetInformer(context.Background(), &securityv1alpha1.VulnerabilityDatabase{}); err != nil {
		return err
	}
	matches := NewMatches()
	gatherer := workload.NewGatherer(mgr.GetCache(), opts.Namespace).ReadNamespacesLive(mgr.GetAPIReader()).
		WithFreshness(Freshness(mgr.GetCache(), matches, opts.ExcludedNamespaces, opts.DBMaxAge, opts.ReportRefreshInterval, opts.Clock))
	pods := &PodReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Registry: opts.Registry,
		Retention: opts.ReportRetention, ExcludedNamespaces: opts.ExcludedNamespaces, Clock: opts.Clock,
		Inventories: opts.Scanner, Concurrency: opts.PodConcurrency, Timeout: opts.ReconcileTimeout,
	}
	if err := pods.SetupWithManager(mgr); err != nil {
		return err
	}
	reports := &ImageScanReportReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scanner: opts.Scanner, DB: opts.DB, JavaDB: opts.JavaDB,
		Recorder: mgr.GetEventRecorder("imageguard"), MaxBytes: opts.ReportMaxBytes,
		RescanInterval: opts.RescanInterval, Concurrency: opts.ScanConcurrency,
		ExcludedNamespaces: opts.ExcludedNamespaces, Clock: opts.Clock,
		Timeout: opts.ScanTimeout + opts.ReconcileTimeout, RefreshInterval: opts.ReportRefreshInterval, Matches: matches,
		MaxAnalysisAge: gatherer.MaxAnalysisAge,
	}
	if err := reports.SetupWithManager(mgr); err != nil {
		return err
	}
	// One cache of signature verdicts, for the reports' status and for admission.
	verifier := &signature.Verifier{Registry: opts.Registry, Reader: mgr.GetAPIReader(), Clock: opts.Clock, RecheckInterval: opts.SignatureRecheckInterval}
	signatures := &SignatureReconciler{
		Client: mgr.GetClient(), Gatherer: gatherer, Verifier: verifier, Keychain: reports.keychain, Clock: opts.Clock,
		RefreshInterval: opts.ReportRefreshInterval, Timeout: opts.ReconcileTimeout,
	}
	if err := signatures.SetupWithManager(mgr); err != nil {
		return err
	}
	verifier.OnVerdict = signatures.VerdictChanged
	// A client of their own: a registry's Retry-After that a listing earns holds the listings,
	// not admission's tag lookups.
	scanRegistry := opts.Registry
	if scanRegistry != nil {
		scanRegistry = registry.NewClient(opts.Registry.Options())
	}
	scans := &RegistryScanReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Clock: opts.Clock, RetryInterval: opts.RegistryScanRetry,
		Lister:             &registryscan.Lister{Registry: scanRegistry, PagesPerSecond: opts.RegistryScanRequestsPerSecond},
		ExcludedNamespaces: opts.ExcludedNamespaces,
	}
	if err := scans.SetupWithManager(mgr); err != nil {
		return err
	}
	if opts.ReceiverAddress != "" {
		if err := mgr.Add(&RegistryReceiver{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Address: opts.ReceiverAddress,
			Log: mgr.GetLogger().WithName("receiver"), Clock: opts.Clock,
		}); err != nil {
			return err
		}
	}
	vdb := &VulnerabilityDatabaseReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), DB: opts.DB, Matches: matches, Recorder: mgr.GetEventRecorder("imageguard"),
		Clock: opts.Clock, MaxAge: opts.DBMaxAge, RefreshInterval: opts.ReportRefreshInterval, Timeout: opts.ReconcileTimeout,
	}
	if err := vdb.SetupWithManager(mgr); err != nil {
		return err
	}
	if opts.JavaDB != nil {
		javaDB := &VulnerabilityDatabaseReconciler{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), DB: opts.JavaDB, Name: securityv1alpha1.JavaDatabaseName,
			Recorder: mgr.GetEventRecorder("imageguard"), Clock: opts.Clock, RefreshInterval: opts.ReportRefreshInterval, Timeout: opts.ReconcileTimeout,
		}
		if err := javaDB.SetupWithManager(mgr); err != nil {
			return err
		}
	}
	if err := SetupPolicies(mgr, gatherer, opts); err != nil {
		return err
	}
	// Policy reports are written in each format asked for while its CRD is installed (the chart
	// can install them).
	if formats := opts.policyReports(); len(formats) > 0 {
		prs := &PolicyReportReconciler{Client: mgr.GetClient(), Reader: mgr.GetClient(), Informers: mgr.GetCache(), Gatherer: gatherer,
			Clock: opts.Clock, Timeout: opts.ReconcileTimeout, Formats: formats}
		if err := prs.SetupWithManager(mgr); err != nil {
			return err
		}
	}
	if opts.Admission != nil {
		if err := setupAdmission(mgr, gatherer, verifier, opts.Clock, *opts.Admission); err != nil {
			return err
		}
	}
	if err := metrics.RegisterDBAge(func() (time.Time, bool) {
		info, ok := opts.DB.Info()
		return info.UpdatedAt, ok
	}); err != nil {
		return err
	}
	if opts.JavaDB != nil {
		if err := metrics.RegisterJavaDBAge(func() (time.Time, bool) {
			info, ok := opts.JavaDB.Info()
			return info.UpdatedAt, ok
		}); err != nil {
			return err
		}
	}
	if layers, ok := opts.Scanner.(interface {
		LayerCacheStats() (scanner.LayerCacheStats, bool)
	}); ok {
		if _, on := layers.LayerCacheStats(); on {
			return metrics.RegisterLayerCache(func() metrics.LayerCache {
				s, _ := layers.LayerCacheStats()
				return metrics.LayerCache{
					Hits: float64(s.Hits), Misses: float64(s.Misses), Corrupt: float64(s.Corrupt), Evictions: float64(s.Evictions),
					Bytes: float64(s.Bytes), Entries: float64(s.Entries), MaxBytes: float64(s.MaxBytes),
				}
			})
		}
	}
	return nil
}

// SetupPolicies adds the reconcilers of ImagePolicies and ClusterImagePolicies (their status,
// and the ValidatingAdmissionPolicies opts.AdmissionPolicies asks for) to mgr, judging through
// gatherer. Setup calls it; a test may run them alone.
func SetupPolicies(mgr ctrl.Manager, gatherer *workload.Gatherer, opts Options) error {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.ReconcileTimeout <= 0 {
		opts.ReconcileTimeout = DefaultReconcileTimeout
	}
	admissionPolicies, err := setupAdmissionPolicies(mgr, opts.AdmissionPolicies)
	if err != nil {
		return err
	}
	for _, clusterScoped := range []bool{false, true} {
		policies := &PolicyReconciler{
			Client: mgr.GetClient(), Gatherer: gatherer, Recorder: mgr.GetEventRecorder("imageguard"),
			ClusterScoped: clusterScoped, Clock: opts.Clock, Timeout: opts.ReconcileTimeout, AdmissionPolicies: admissionPolicies,
		}
		if err := policies.SetupWithManager(mgr); err != nil {
			return err
		}
	}
	return nil
}

// setupAdmissionPolicies returns what keeps the generated ValidatingAdmissionPolicies: off when
// opts is nil (those generated before are removed at start) or the API server does not serve them.
func setupAdmissionPolicies(mgr ctrl.Manager, opts *vap.Options) (*AdmissionPolicies, error) {
	served := admissionPoliciesServed(mgr)
	if opts == nil {
		if served {
			if err := mgr.Add(removeAllGenerated(mgr.GetAPIReader(), mgr.GetClient())); err != nil {
				return nil, err
			}
		}
		return &AdmissionPolicies{Off: securityv1alpha1.ReasonGenerationDisabled}, nil
	}
	if !served {
		mgr.GetLogger().Info("The API server does not serve admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy: none is generated; only the webhook enforces")
		return &AdmissionPolicies{Off: securityv1alpha1.ReasonAdmissionPolicyUnsupported}, nil
	}
	return &AdmissionPolicies{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Options: *opts}, nil
}

// CacheOptions keep in the informer cache only what the reconcilers read of pods, which dominate
// its memory at scale, and of ValidatingAdmissionPolicies only those ImageGuard generates; and
// drop managed fields everywhere.
func CacheOptions() cache.Options {
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:  {Transform: TrimPod},
			&corev1.Node{}: {Transform: TrimNode},
			&admissionregistrationv1.ValidatingAdmissionPolicy{}:        {Label: generatedSelector},
			&admissionregistrationv1.ValidatingAdmissionPolicyBinding{}: {Label: generatedSelector},
		},
	}
}

// TrimNode keeps of a node its name and the OS and architecture its kubelet reports (the
// platform of the images its pods run), and what admission asks to tell which pods may land on
// it: its labels and the taints that keep pods off (NoSchedule, NoExecute).
func TrimNode(obj any) (any, error) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	trimmed := &corev1.Node{
		TypeMeta:   node.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: node.Name, UID: node.UID, ResourceVersion: node.ResourceVersion, Labels: node.Labels},
		Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{
			OperatingSystem: node.Status.NodeInfo.OperatingSystem, Architecture: node.Status.NodeInfo.Architecture,
		}},
	}
	for _, t := range node.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			trimmed.Spec.Taints = append(trimmed.Spec.Taints, corev1.Taint{Key: t.Key, Value: t.Value, Effect: t.Effect})
		}
	}
	return trimmed, nil
}

// TrimPod keeps of a pod its identity, owners, images (image volumes too), image IDs, pull
// secrets, service account, node (and the platform its nodeSelector asks for) and phase.
func TrimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	trimmed := &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			Generation: pod.Generation, Labels: pod.Labels, OwnerReferences: pod.OwnerReferences,
			DeletionTimestamp: pod.DeletionTimestamp, CreationTimestamp: pod.CreationTimestamp,
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: pod.Spec.ServiceAccountName,
			ImagePullSecrets:   pod.Spec.ImagePullSecrets,
			NodeName:           pod.Spec.NodeName,
		},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}
	for _, key := range []string{corev1.LabelOSStable, corev1.LabelArchStable} {
		if v, ok := pod.Spec.NodeSelector[key]; ok {
			if trimmed.Spec.NodeSelector == nil {
				trimmed.Spec.NodeSelector = map[string]string{}
			}
			trimmed.Spec.NodeSelector[key] = v
		}
	}
	for _, c := range workload.Containers(&pod.Spec) {
		kept := corev1.Container{Name: c.Name, Image: c.Image}
		switch c.Type {
		case workload.InitContainer:
			trimmed.Spec.InitContainers = append(trimmed.Spec.InitContainers, kept)
		case workload.RegularContainer:
			trimmed.Spec.Containers = append(trimmed.Spec.Containers, kept)
		case workload.EphemeralContainer:
			trimmed.Spec.EphemeralContainers = append(trimmed.Spec.EphemeralContainers,
				corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon(kept)})
		case workload.ImageVolume:
			trimmed.Spec.Volumes = append(trimmed.Spec.Volumes, corev1.Volume{Name: c.Name,
				VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: c.Image}}})
		}
	}
	trim := func(in []corev1.ContainerStatus) []corev1.ContainerStatus {
		var out []corev1.ContainerStatus
		for _, s := range in {
			out = append(out, corev1.ContainerStatus{Name: s.Name, Image: s.Image, ImageID: s.ImageID})
		}
		return out
	}
	trimmed.Status.InitContainerStatuses = trim(pod.Status.InitContainerStatuses)
	trimmed.Status.ContainerStatuses = trim(pod.Status.ContainerStatuses)
	trimmed.Status.EphemeralContainerStatuses = trim(pod.Status.EphemeralContainerStatuses)
	return trimmed, nil
}
