package workload

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
)

// Field indexes of ImageScanReports that reports are looked up by.
const (
	// IndexReportDigest holds a report's spec.digest.
	IndexReportDigest = "imageguard.spec.digest"
	// IndexReportTag holds "<spec.image>:<tag>" for each of a report's spec.tags.
	IndexReportTag = "imageguard.spec.imageTag"
)

// ReportIndexes are the field indexes of ImageScanReports the Gatherer reads, by name.
var ReportIndexes = map[string]client.IndexerFunc{
	IndexReportDigest: func(obj client.Object) []string {
		return []string{obj.(*securityv1alpha1.ImageScanReport).Spec.Digest}
	},
	IndexReportTag: func(obj client.Object) []string {
		r := obj.(*securityv1alpha1.ImageScanReport)
		out := make([]string, 0, len(r.Spec.Tags))
		for _, tag := range r.Spec.Tags {
			out = append(out, r.Spec.Image+":"+tag)
		}
		return out
	},
}

// IndexReports registers ReportIndexes on the manager's cache.
func IndexReports(ctx context.Context, indexer client.FieldIndexer) error {
	for name, index := range ReportIndexes {
		if err := indexer.IndexField(ctx, &securityv1alpha1.ImageScanReport{}, name, index); err != nil {
			return err
		}
	}
	return nil
}

// Workload is a top-level workload and the containers it runs.
type Workload struct {
	Owner
	Namespace string
	// Labels are the workload's own; PodLabels those its pods carry (its pod template's). A
	// policy's match.selector applies when it selects either.
	Labels, PodLabels map[string]string
	Containers        []Container
	// Object is the workload for Events: the object itself, or for an owner of a kind outside the
	// table (known from its pods only), its metadata.
	Object client.Object
}

// Key is "<namespace>/<kind>/<name>", unique per workload.
func (w Workload) Key() string { return w.Namespace + "/" + w.Kind + "/" + w.Name }

// Gatherer reads the inputs of verdicts from a cache: policies (compiled once per generation),
// the workloads they match and the reports of their images.
type Gatherer struct {
	reader client.Reader
	// signatureNamespace is where the Secrets and ConfigMaps of a ClusterImagePolicy's signature
	// rule are read when it does not say.
	signatureNamespace string
	// live reads a namespace the cache does not show yet (one made a moment ago, in the same
	// kubectl apply as its workloads); nil: the cache only.
	live client.Reader
	// freshness completes what a policy reads of a report; nil: the status alone.
	freshness Freshness

	mu        sync.Mutex
	compiled  map[types.UID]*Policy
	sweepSize int // the size at which compiled policies that no longer exist are dropped next
}

// NewGatherer returns a Gatherer reading from reader (the manager's cache, with IndexReports
// registered); signatureNamespace is where a ClusterImagePolicy's signature keys and trust root are
// read when it does not name a namespace (the controller's).
func NewGatherer(reader client.Reader, signatureNamespace string) *Gatherer {
	return &Gatherer{reader: reader, signatureNamespace: signatureNamespace, compiled: map[types.UID]*Policy{}, sweepSize: 64}
}

// ReadNamespacesLive makes the Gatherer read a namespace from live (the API server) when the cache
// does not have it yet, rather than fail.
func (g *Gatherer) ReadNamespacesLive(live client.Reader) *Gatherer {
	g.live = live
	return g
}

// Freshness completes what a policy reads of a report (policy.Report.MatchedDB) with what the
// controller knows of its last match and of the DB in use, which its status may not say yet.
type Freshness func(rep *securityv1alpha1.ImageScanReport, out *policy.Report)

// WithFreshness makes the Gatherer complete each report it reads with f.
func (g *Gatherer) WithFreshness(f Freshness) *Gatherer {
	g.freshness = f
	return g
}

// reportOf returns what a policy reads of rep, completed by the Gatherer's freshness.
func (g *Gatherer) reportOf(rep *securityv1alpha1.ImageScanReport) *policy.Report {
	out := policy.ReportOf(rep)
	if out != nil && g.freshness != nil {
		g.freshness(rep, out)
	}
	return out
}

// Policy is an ImagePolicy or ClusterImagePolicy compiled for judging.
type Policy struct {
	// Ref names the policy in messages, metrics and Events: ImagePolicy/<namespace>/<name> or
	// ClusterImagePolicy/<name>.
	Ref string
	// Name and Namespace are the policy's own ("" for a cluster policy).
	Name, Namespace string
	UID             types.UID
	Generation      int64
	Enforcement     securityv1alpha1.Enforcement
	OnUnscanned     securityv1alpha1.UnscannedAction
	Rules           *policy.Policy
	// Err says why the policy can never be evaluated; the other fields but the names are then unset.
	Err error

	images     []policy.Glob
	selector   labels.Selector
	namespaces labels.Selector // nil for a namespaced policy
}

// Compile returns obj (an *ImagePolicy or *ClusterImagePolicy) compiled, compiling it again only
// when its generation changed.
func (g *Gatherer) Compile(obj client.Object) *Policy {
	g.mu.Lock()
	c, ok := g.compiled[obj.GetUID()]
	g.mu.Unlock()
	if ok && c.Generation == obj.GetGeneration() {
		return c
	}
	c = Compile(obj, g.signatureNamespace)
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.compiled) >= g.sweepSize {
		g.sweepLocked()
	}
	g.compiled[obj.GetUID()] = c
	return c
}

// Compile compiles obj, an *ImagePolicy or *ClusterImagePolicy; an error that makes it never
// usable is in the result's Err. The Secrets and ConfigMaps its signature rule names are read in
// the policy's namespace (an ImagePolicy, whatever it says), or where the rule says, else in
// signatureNamespace (a ClusterImagePolicy).
func Compile(obj client.Object, signatureNamespace string) *Policy {
	c := &Policy{Name: obj.GetName(), Namespace: obj.GetNamespace(), UID: obj.GetUID(), Generation: obj.GetGeneration()}
	var match securityv1alpha1.ImageMatch
	var namespaceSelector *metav1.LabelSelector
	var rules securityv1alpha1.PolicyRules
	switch p := obj.(type) {
	case *securityv1alpha1.ImagePolicy:
		c.Ref = "ImagePolicy/" + p.Namespace + "/" + p.Name
		c.Enforcement, match, rules = p.Spec.Enforcement, p.Spec.Match, p.Spec.Rules
	case *securityv1alpha1.ClusterImagePolicy:
		c.Ref = "ClusterImagePolicy/" + p.Name
		c.Enforcement, match, rules = p.Spec.Enforcement, p.Spec.Match.ImageMatch, p.Spec.Rules
		namespaceSelector = p.Spec.Match.NamespaceSelector
	default:
		c.Err = fmt.Errorf("%T is not an image policy", obj)
		return c
	}
	c.OnUnscanned = rules.OnUnscanned
	if s := rules.Signatures; s != nil {
		rules.Signatures = signatureNamespaces(s, obj.GetNamespace(), signatureNamespace)
	}
	var err error
	if c.Rules, err = policy.Compile(rules); err != nil {
		c.Err = err
		return c
	}
	if c.images, err = policy.CompileGlobs(match.Images); err != nil {
		c.Err = fmt.Errorf("match.images: %w", err)
		return c
	}
	c.selector = labels.Everything()
	if match.Selector != nil {
		if c.selector, err = metav1.LabelSelectorAsSelector(match.Selector); err != nil {
			c.Err = fmt.Errorf("match.selector: %w", err)
			return c
		}
	}
	if namespaceSelector != nil {
		if c.namespaces, err = metav1.LabelSelectorAsSelector(namespaceSelector); err != nil {
			c.Err = fmt.Errorf("match.namespaceSelector: %w", err)
			return c
		}
	}
	return c
}

// signatureNamespaces returns a copy of rule whose Secret and ConfigMap references all name their
// namespace: policyNamespace for an ImagePolicy's (its own, whatever it says), else theirs, else
// fallback.
func signatureNamespaces(rule *securityv1alpha1.SignatureRule, policyNamespace, fallback string) *securityv1alpha1.SignatureRule {
	rule = rule.DeepCopy()
	ns := func(set string) string {
		switch {
		case policyNamespace != "":
			return policyNamespace
		case set != "":
			return set
		}
		return fallback
	}
	for i := range rule.Keys {
		if ref := rule.Keys[i].SecretRef; ref != nil {
			ref.Namespace = ns(ref.Namespace)
			if ref.Key == "" {
				ref.Key = "cosign.pub"
			}
		}
	}
	if t := rule.TrustRoot; t != nil {
		t.Namespace = ns(t.Namespace)
		if t.Key == "" {
			t.Key = "trusted_root.json"
		}
	}
	return rule
}

// sweepLocked drops the compiled policies whose object is gone, so that deleted policies leave
// nothing behind; it runs when the map has doubled since the last sweep (amortised constant time).
func (g *Gatherer) sweepLocked() {
	g.sweepSize = max(2*len(g.compiled), 64)
	if g.reader == nil {
		return
	}
	live := map[types.UID]bool{}
	namespaced := &securityv1alpha1.ImagePolicyList{}
	cluster := &securityv1alpha1.ClusterImagePolicyList{}
	ctx := context.Background()
	if g.reader.List(ctx, namespaced, client.UnsafeDisableDeepCopy) != nil || g.reader.List(ctx, cluster, client.UnsafeDisableDeepCopy) != nil {
		return // try again next time
	}
	for i := range namespaced.Items {
		live[namespaced.Items[i].UID] = true
	}
	for i := range cluster.Items {
		live[cluster.Items[i].UID] = true
	}
	for uid := range g.compiled {
		if !live[uid] {
			delete(g.compiled, uid)
		}
	}
	g.sweepSize = max(2*len(g.compiled), 64)
}

// Forget drops what the Gatherer keeps of the deleted policy ref (a Policy's Ref).
func (g *Gatherer) Forget(ref string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for uid, c := range g.compiled {
		if c.Ref == ref {
			delete(g.compiled, uid)
		}
	}
}

// Compiled returns how many policies are kept compiled.
func (g *Gatherer) Compiled() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.compiled)
}

// SelectsNamespace reports whether the policy applies in a namespace with these labels.
func (p *Policy) SelectsNamespace(nsLabels map[string]string) bool {
	return p.namespaces == nil || p.namespaces.Matches(labels.Set(nsLabels))
}

// SelectsLabels reports whether the policy's match.selector selects any of these label sets (a
// workload's own labels, its pods' labels).
func (p *Policy) SelectsLabels(sets ...map[string]string) bool {
	if p.selector == nil {
		return true
	}
	for _, set := range sets {
		if p.selector.Matches(labels.Set(set)) {
			return true
		}
	}
	return false
}

// MatchImages returns the images the policy's match.images select (all when it has none).
func (p *Policy) MatchImages(images []policy.Image) []policy.Image {
	if len(p.images) == 0 {
		return images
	}
	var out []policy.Image
	for _, img := range images {
		if policy.AnyMatch(p.images, img) {
			out = append(out, img)
		}
	}
	return out
}

// Matches reports whether the policy applies to w: its selector picks w's labels and one of w's
// images matches match.images.
func (p *Policy) Matches(w Workload) bool {
	if !p.SelectsLabels(w.Labels, w.PodLabels) {
		return false
	}
	if len(p.images) == 0 {
		return true
	}
	for _, c := range w.Containers {
		if img, err := policy.ParseImage(c.Image); err == nil && policy.AnyMatch(p.images, img) {
			return true
		}
	}
	return false
}

// PoliciesFor returns the valid policies that apply in namespace: its ImagePolicies and the
// ClusterImagePolicies whose namespaceSelector selects it, sorted by Ref. A policy that does not
// compile is left out: its own status says why.
func (g *Gatherer) PoliciesFor(ctx context.Context, namespace string) ([]*Policy, error) {
	var out []*Policy
	namespaced := &securityv1alpha1.ImagePolicyList{}
	if err := g.reader.List(ctx, namespaced, client.InNamespace(namespace), client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing ImagePolicies: %w", err)
	}
	for i := range namespaced.Items {
		if c := g.Compile(&namespaced.Items[i]); c.Err == nil {
			out = append(out, c)
		}
	}
	cluster := &securityv1alpha1.ClusterImagePolicyList{}
	if err := g.reader.List(ctx, cluster, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing ClusterImagePolicies: %w", err)
	}
	var nsLabels map[string]string
	for i := range cluster.Items {
		c := g.Compile(&cluster.Items[i])
		if c.Err != nil {
			continue
		}
		if c.namespaces != nil && !c.namespaces.Empty() && nsLabels == nil {
			ns := &corev1.Namespace{}
			err := g.reader.Get(ctx, client.ObjectKey{Name: namespace}, ns)
			if apierrors.IsNotFound(err) && g.live != nil {
				err = g.live.Get(ctx, client.ObjectKey{Name: namespace}, ns)
			}
			if err != nil {
				return nil, fmt.Errorf("reading namespace %s: %w", namespace, err)
			}
			nsLabels = ns.Labels
			if nsLabels == nil {
				nsLabels = map[string]string{}
			}
		}
		if c.SelectsNamespace(nsLabels) {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *Policy) int { return cmp.Compare(a.Ref, b.Ref) })
	return out, nil
}

// MaxAnalysisAge returns the smallest vulnerabilities.maxAnalysisAge of the policies that apply to
// namespace; 0 when none says.
func (g *Gatherer) MaxAnalysisAge(ctx context.Context, namespace string) (time.Duration, error) {
	policies, err := g.PoliciesFor(ctx, namespace)
	if err != nil {
		return 0, err
	}
	var out time.Duration
	for _, p := range policies {
		if d := p.Rules.MaxAnalysisAge(); d > 0 && (out == 0 || d < out) {
			out = d
		}
	}
	return out, nil
}

// Namespaces returns the namespaces in a policy's scope: its own, or for a cluster policy those
// its namespaceSelector selects.
func (g *Gatherer) Namespaces(ctx context.Context, p *Policy) ([]string, error) {
	if p.Namespace != "" {
		return []string{p.Namespace}, nil
	}
	list := &corev1.NamespaceList{}
	if err := g.reader.List(ctx, list); err != nil {
		return nil, err
	}
	var out []string
	for i := range list.Items {
		if p.SelectsNamespace(list.Items[i].Labels) {
			out = append(out, list.Items[i].Name)
		}
	}
	return out, nil
}

// Matched returns the workloads p matches, sorted by Key.
func (g *Gatherer) Matched(ctx context.Context, p *Policy) ([]Workload, error) {
	namespaces, err := g.Namespaces(ctx, p)
	if err != nil {
		return nil, err
	}
	var out []Workload
	for _, ns := range namespaces {
		all, err := g.Workloads(ctx, ns)
		if err != nil {
			return nil, err
		}
		for _, w := range all {
			if p.Matches(w) {
				out = append(out, w)
			}
		}
	}
	return out, nil
}

// Workloads returns the top-level workloads of a namespace, sorted by Key: each object of the
// table judged at its own template (a ReplicaSet or Job only without a controller), the bare Pods,
// and, for pods whose top owner is of a kind outside the table, that owner, running the
// containers of its pods.
func (g *Gatherer) Workloads(ctx context.Context, namespace string) ([]Workload, error) {
	var out []Workload
	owners := map[types.UID]int{} // owners outside the table -> index in out
	for _, kind := range Kinds {
		list := kind.NewList()
		if err := g.reader.List(ctx, list, client.InNamespace(namespace)); err != nil {
			return nil, fmt.Errorf("listing %ss in %s: %w", kind.GVK.Kind, namespace, err)
		}
		err := apimeta.EachListItem(list, func(o runtime.Object) error {
			obj := o.(client.Object)
			if !kind.RollsUp || metav1.GetControllerOf(obj) == nil {
				out = append(out, Workload{
					Owner:     Owner{APIVersion: kind.GVK.GroupVersion().String(), Kind: kind.GVK.Kind, Name: obj.GetName(), UID: obj.GetUID()},
					Namespace: namespace, Labels: obj.GetLabels(), PodLabels: kind.PodLabels(obj),
					Containers: Containers(kind.PodSpec(obj)), Object: obj,
				})
				return nil
			}
			pod, ok := obj.(*corev1.Pod)
			if !ok {
				return nil // judged through its controller
			}
			owner, err := TopOwner(ctx, g.reader, pod)
			if err != nil {
				return err
			}
			if owner.InTable() {
				return nil // judged at the owner's template
			}
			i, seen := owners[owner.UID]
			if !seen {
				meta := &metav1.PartialObjectMetadata{
					TypeMeta:   metav1.TypeMeta{APIVersion: owner.APIVersion, Kind: owner.Kind},
					ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: owner.Name, UID: owner.UID},
				}
				owners[owner.UID] = len(out)
				out = append(out, Workload{Owner: owner, Namespace: namespace, Labels: pod.Labels, PodLabels: pod.Labels, Object: meta})
				i = len(out) - 1
			}
			// The owner runs what any of its pods runs (during a rollout, two versions).
			for _, c := range Containers(&pod.Spec) {
				if !slices.Contains(out[i].Containers, c) {
					out[i].Containers = append(out[i].Containers, c)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(out, func(a, b Workload) int { return cmp.Compare(a.Key(), b.Key()) })
	return out, nil
}

// Images returns the images of containers as a policy sees them, each with its report as seen
// from namespace (see Report). A malformed reference is kept as its repository, unscanned.
func (g *Gatherer) Images(ctx context.Context, namespace string, containers []Container) []policy.Image {
	out := make([]policy.Image, 0, len(containers))
	for _, c := range containers {
		img, err := policy.ParseImage(c.Image)
		if err != nil {
			out = append(out, policy.Image{Container: c.Name, Repository: c.Image})
			continue
		}
		img.Container = c.Name
		img.Report = g.Report(ctx, namespace, img)
		img.Signatures = g.Signatures(ctx, namespace, img)
		out = append(out, img)
	}
	return out
}

// Report returns the scan report of img as seen from namespace, nil when it was never scanned:
// by digest in the namespace, else by digest in any namespace (a digest's findings are the same
// everywhere; the newest scan is taken), else, for a reference without digest, by the repository
// and tag the pod controller saw in the namespace. When the tag moved, the report of the digest
// seen last is taken, even if it is not scanned yet: the older digest's findings say nothing of
// the newer.
func (g *Gatherer) Report(ctx context.Context, namespace string, img policy.Image) *policy.Report {
	if img.Digest != "" {
		if rep := g.platformReports(ctx, img.Digest, namespace); rep != nil {
			return rep
		}
		return g.platformReports(ctx, img.Digest, "")
	}
	if img.Tag == "" {
		return nil
	}
	// The tag's newest report names its digest; that digest is judged on every platform.
	rep := g.find(ctx, IndexReportTag, img.Repository+":"+img.Tag, namespace, newestCreated)
	if rep == nil {
		return nil
	}
	if all := g.platformReports(ctx, rep.Spec.Digest, namespace); all != nil {
		return all
	}
	return g.reportOf(rep)
}

// platformReports returns the scanned report of digest in namespace (all when empty) with the
// newest scan, for each platform, as one: the default platform's (else the first by name) with
// the others in Others; nil when none is scanned.
func (g *Gatherer) platformReports(ctx context.Context, digest, namespace string) *policy.Report {
	list := &securityv1alpha1.ImageScanReportList{}
	opts := []client.ListOption{client.MatchingFields{IndexReportDigest: digest}, client.UnsafeDisableDeepCopy}
	if namespace != "" {
		opts = append(opts, client.InNamespace(namespace))
	}
	if err := g.reader.List(ctx, list, opts...); err != nil {
		return nil
	}
	best := map[string]*securityv1alpha1.ImageScanReport{}
	for i := range list.Items {
		rep := &list.Items[i]
		if b := best[rep.Spec.Platform]; (b == nil && policy.ReportOf(rep) != nil) || (b != nil && newestScan(rep, b)) {
			best[rep.Spec.Platform] = rep
		}
	}
	var out *policy.Report
	for _, platform := range slices.Sorted(maps.Keys(best)) {
		rep := g.reportOf(best[platform])
		if out == nil {
			out = rep
		} else {
			out.Others = append(out.Others, rep)
		}
	}
	return out
}

// Signatures returns the verdicts on img's signatures that its report in namespace holds: by
// digest, else by the repository and tag the pod controller saw. Never another namespace's: a
// verdict was made with the namespace's pull secrets, for the policies that apply there.
func (g *Gatherer) Signatures(ctx context.Context, namespace string, img policy.Image) map[string]policy.SignatureVerdict {
	if img.Digest != "" {
		return policy.SignaturesOf(g.find(ctx, IndexReportDigest, img.Digest, namespace, mostSignatures))
	}
	if img.Tag == "" {
		return nil
	}
	return policy.SignaturesOf(g.find(ctx, IndexReportTag, img.Repository+":"+img.Tag, namespace, newestCreated))
}

// mostSignatures prefers the report with more signature verdicts.
func mostSignatures(a, b *securityv1alpha1.ImageScanReport) bool {
	return len(a.Status.Signatures) > len(b.Status.Signatures)
}

// LastKnown returns, for a tag whose digest cannot be told now, the report of the digest the tag
// named last: in namespace, else in any namespace (the newest report of that repository and tag).
// Its findings may only refuse: the tag may name another digest now.
func (g *Gatherer) LastKnown(ctx context.Context, namespace string, img policy.Image) *policy.Report {
	if img.Tag == "" {
		return nil
	}
	key := img.Repository + ":" + img.Tag
	for _, ns := range []string{namespace, ""} {
		rep := g.find(ctx, IndexReportTag, key, ns, newestCreated)
		if rep == nil {
			continue
		}
		// That digest, on every platform.
		if all := g.platformReports(ctx, rep.Spec.Digest, ns); all != nil {
			return all
		}
		if out := g.reportOf(rep); out != nil {
			return out
		}
	}
	return nil
}

// newestScan prefers a's scan to b's when it is newer; an unscanned report is never preferred.
func newestScan(a, b *securityv1alpha1.ImageScanReport) bool {
	ra := policy.ReportOf(a)
	if ra == nil {
		return false
	}
	rb := policy.ReportOf(b)
	return rb == nil || ra.ScannedAt.After(rb.ScannedAt)
}

// newestCreated prefers the report created last.
func newestCreated(a, b *securityv1alpha1.ImageScanReport) bool {
	return b.CreationTimestamp.Before(&a.CreationTimestamp)
}

// find returns the report whose field index holds value, in namespace (all when empty), that
// better prefers to every other; nil when there is none.
func (g *Gatherer) find(ctx context.Context, index, value, namespace string, better func(a, b *securityv1alpha1.ImageScanReport) bool) *securityv1alpha1.ImageScanReport {
	list := &securityv1alpha1.ImageScanReportList{}
	opts := []client.ListOption{client.MatchingFields{index: value}, client.UnsafeDisableDeepCopy}
	if namespace != "" {
		opts = append(opts, client.InNamespace(namespace))
	}
	if err := g.reader.List(ctx, list, opts...); err != nil {
		return nil
	}
	var best *securityv1alpha1.ImageScanReport
	for i := range list.Items {
		if best == nil || better(&list.Items[i], best) {
			best = &list.Items[i]
		}
	}
	return best
}
