// Package vap generates, for an ImagePolicy or ClusterImagePolicy that enforces or warns, a
// ValidatingAdmissionPolicy and its binding that express the rules of the policy that need no
// scan: registries.allowed, tags.disallowLatest and tags.requireDigest, over pods and every pod
// template kind, with the policy's match.images, selector and namespaceSelector. Kubernetes
// evaluates them itself, in-process, so that these rules hold while ImageGuard's webhook is
// unreachable (an upgrade, a crash loop, a drained node) and its failurePolicy is Ignore.
//
// The CEL reads every image reference as internal/policy.ParseImage does: the same grammar
// (policy.ReferencePattern), the same canonical host and Docker Hub repository, and the globs'
// own regular expressions; a table test against a real API server proves they agree. It judges
// what the webhook judges: updates only when their images change or new labels bring the object
// under the policy, and not the objects the cluster's controllers make for an owner (the owner
// was judged at its template).
package vap

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/imageref"
	"github.com/imageguard/imageguard/internal/policy"
)

// Labels and annotations of the generated objects.
const (
	// LabelGenerated marks the objects ImageGuard generates ("true"); the controller watches only them.
	LabelGenerated = "imageguard.dev/generated"
	// LabelManagedBy is the recommended label, "imageguard".
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// AnnotationPolicy names the policy an object was generated from (its Ref).
	AnnotationPolicy = "imageguard.dev/policy"
)

// namespaceNameLabel is the label the API server sets on every namespace to its name.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// Options are what the generated objects share with the webhook's configuration.
type Options struct {
	// ExemptNamespaces are never checked (kube-system never is either).
	ExemptNamespaces []string
	// OptOutLabel on a namespace with the value "disabled" turns the validating webhook off there,
	// and so the generated policies.
	OptOutLabel string
	// ControllerUsers make pods, ReplicaSets and Jobs for a controlling owner judged at its template.
	ControllerUsers []string
}

// Why no objects are generated for a policy.
var (
	ErrNotEnforcing      = errors.New("the policy's enforcement is Audit")
	ErrNoGeneratedRules  = errors.New("the policy has no rule a ValidatingAdmissionPolicy can express (registries.allowed, tags.disallowLatest, tags.requireDigest)")
	ErrExemptNamespace   = errors.New("admission never checks the policy's namespace")
	ErrTooLarge          = fmt.Errorf("the policy's globs make a CEL expression longer than the %d characters the API server takes; only ImageGuard's webhook enforces it", maxExpressionSize)
	errNotAnImagePolicy  = errors.New("not an ImagePolicy or ClusterImagePolicy")
	maxGeneratedNameSize = 253
)

// maxExpressionSize is the longest CEL expression the API server takes (cel-go's default limit,
// in code points).
const maxExpressionSize = 100000

// tooLarge reports whether an expression of vap is longer than the API server takes.
func tooLarge(vap *admissionregistrationv1.ValidatingAdmissionPolicy) bool {
	exprs := []string{vap.Spec.Validations[0].Expression, vap.Spec.Validations[0].MessageExpression}
	for _, v := range vap.Spec.Variables {
		exprs = append(exprs, v.Expression)
	}
	for _, e := range exprs {
		if utf8.RuneCountInString(e) > maxExpressionSize {
			return true
		}
	}
	return false
}

// Objects are the generated policy and its binding, both named Name(ref).
type Objects struct {
	Policy  *admissionregistrationv1.ValidatingAdmissionPolicy
	Binding *admissionregistrationv1.ValidatingAdmissionPolicyBinding
	// Rules are the policy's rules they express (policy.RuleRegistries, policy.RuleTags).
	Rules []string
}

// Name is the name of the objects generated for the policy whose Ref is ref:
// imageguard.ns.<namespace>.<name> for ImagePolicy/<namespace>/<name> (a namespace has no '.'),
// imageguard.cluster.<name> for ClusterImagePolicy/<name>; a name too long for the API is cut and
// ends with a hash of the whole.
func Name(ref string) string {
	kind, rest, _ := strings.Cut(ref, "/")
	var n string
	if kind == "ClusterImagePolicy" {
		n = "imageguard.cluster." + rest
	} else {
		ns, name, _ := strings.Cut(rest, "/")
		n = "imageguard.ns." + ns + "." + name
	}
	if len(n) <= maxGeneratedNameSize {
		return n
	}
	sum := sha256.Sum256([]byte(n))
	return strings.TrimRight(n[:maxGeneratedNameSize-13], ".-") + "." + hex.EncodeToString(sum[:6])
}

// policyParts are what generation reads of either kind of policy.
type policyParts struct {
	ref, namespace, name string
	uid                  types.UID
	kind                 string
	enforcement          securityv1alpha1.Enforcement
	match                securityv1alpha1.ImageMatch
	namespaceSelector    *metav1.LabelSelector
	rules                securityv1alpha1.PolicyRules
}

func partsOf(obj client.Object) (policyParts, error) {
	switch p := obj.(type) {
	case *securityv1alpha1.ImagePolicy:
		return policyParts{ref: "ImagePolicy/" + p.Namespace + "/" + p.Name, namespace: p.Namespace, name: p.Name, uid: p.UID,
			kind: "ImagePolicy", enforcement: p.Spec.Enforcement, match: p.Spec.Match, rules: p.Spec.Rules}, nil
	case *securityv1alpha1.ClusterImagePolicy:
		return policyParts{ref: "ClusterImagePolicy/" + p.Name, name: p.Name, uid: p.UID, kind: "ClusterImagePolicy",
			enforcement: p.Spec.Enforcement, match: p.Spec.Match.ImageMatch, namespaceSelector: p.Spec.Match.NamespaceSelector,
			rules: p.Spec.Rules}, nil
	}
	return policyParts{}, errNotAnImagePolicy
}

// Generate returns the objects for obj, an *ImagePolicy or *ClusterImagePolicy, as they must be.
// namespace is the policy's Namespace for an ImagePolicy, which owns its objects (a cluster-scoped
// object cannot be owned by a namespaced one: the controller removes them with the policy), nil
// for a cluster policy, which owns them itself. A policy that needs none returns ErrNotEnforcing,
// ErrNoGeneratedRules or ErrExemptNamespace; one that can never be evaluated, the reason.
func Generate(obj client.Object, namespace *corev1.Namespace, opts Options) (*Objects, error) {
	p, err := partsOf(obj)
	if err != nil {
		return nil, err
	}
	var action admissionregistrationv1.ValidationAction
	var failure admissionregistrationv1.FailurePolicyType
	switch p.enforcement {
	case securityv1alpha1.EnforcementEnforce:
		// An expression that cannot be evaluated (a cost limit a hostile object reaches) refuses.
		action, failure = admissionregistrationv1.Deny, admissionregistrationv1.Fail
	case securityv1alpha1.EnforcementWarn:
		action, failure = admissionregistrationv1.Warn, admissionregistrationv1.Ignore
	default:
		return nil, ErrNotEnforcing
	}
	if p.namespace != "" && (p.namespace == "kube-system" || slices.Contains(opts.ExemptNamespaces, p.namespace)) {
		return nil, ErrExemptNamespace
	}
	tags := p.rules.Tags
	if tags != nil && !tags.DisallowLatest && !tags.RequireDigest {
		tags = nil
	}
	if p.rules.Registries == nil && tags == nil {
		return nil, ErrNoGeneratedRules
	}
	var allowed []policy.Glob
	if r := p.rules.Registries; r != nil {
		if allowed, err = policy.CompileGlobs(r.Allowed); err != nil {
			return nil, fmt.Errorf("registries.allowed: %w", err)
		}
	}
	images, err := policy.CompileGlobs(p.match.Images)
	if err != nil {
		return nil, fmt.Errorf("match.images: %w", err)
	}
	for what, sel := range map[string]*metav1.LabelSelector{"match.selector": p.match.Selector, "match.namespaceSelector": p.namespaceSelector} {
		if _, err := metav1.LabelSelectorAsSelector(sel); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	name := Name(p.ref)
	meta := metav1.ObjectMeta{
		Name:        name,
		Labels:      map[string]string{LabelGenerated: "true", LabelManagedBy: "imageguard"},
		Annotations: map[string]string{AnnotationPolicy: p.ref},
	}
	if p.namespace == "" {
		meta.OwnerReferences = []metav1.OwnerReference{{APIVersion: securityv1alpha1.GroupVersion.String(), Kind: p.kind,
			Name: p.name, UID: p.uid, Controller: ptr.To(true)}}
	} else if namespace != nil {
		// Not the controller: the policy is. Deleting the namespace removes them even while
		// ImageGuard is down.
		meta.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Namespace", Name: namespace.Name, UID: namespace.UID}}
	}
	g := generator{parts: p, allowed: allowed, images: images, tags: tags, opts: opts}
	vap := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: meta,
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy:    ptr.To(failure),
			MatchConstraints: matchConstraints(),
			MatchConditions:  g.matchConditions(),
			Variables:        g.variables(true),
			Validations:      []admissionregistrationv1.Validation{g.validation(action)},
		},
	}
	// Globs so many and so long that the fast path passes CEL's size limit: without it (the parse
	// writes the globs in steps).
	if tooLarge(vap) {
		vap.Spec.Variables = g.variables(false)
		if tooLarge(vap) {
			return nil, ErrTooLarge
		}
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: *meta.DeepCopy(),
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionregistrationv1.ValidationAction{action},
			MatchResources: &admissionregistrationv1.MatchResources{
				NamespaceSelector: g.namespaceSelector(),
				ObjectSelector:    &metav1.LabelSelector{},
				MatchPolicy:       ptr.To(admissionregistrationv1.Equivalent),
			},
		},
	}
	return &Objects{Policy: vap, Binding: binding, Rules: g.rules()}, nil
}

// matchConstraints are the requests the webhook sees: creates and updates of pods (their
// ephemeral containers too) and of every kind with a pod template.
func matchConstraints() *admissionregistrationv1.MatchResources {
	rule := func(group string, resources ...string) admissionregistrationv1.NamedRuleWithOperations {
		return admissionregistrationv1.NamedRuleWithOperations{RuleWithOperations: admissionregistrationv1.RuleWithOperations{
			Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
			Rule: admissionregistrationv1.Rule{APIGroups: []string{group}, APIVersions: []string{"v1"}, Resources: resources,
				Scope: ptr.To(admissionregistrationv1.NamespacedScope)},
		}}
	}
	return &admissionregistrationv1.MatchResources{
		NamespaceSelector: &metav1.LabelSelector{},
		ObjectSelector:    &metav1.LabelSelector{},
		MatchPolicy:       ptr.To(admissionregistrationv1.Equivalent),
		ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{
			rule("", "pods", "pods/ephemeralcontainers"),
			rule("apps", "deployments", "statefulsets", "daemonsets", "replicasets"),
			rule("batch", "jobs", "cronjobs"),
		},
	}
}

// namespaceSelector is where the policy applies, less where admission never checks: an
// ImagePolicy's own namespace, or a cluster policy's namespaceSelector without kube-system and
// the exempt namespaces; never a namespace that opted out.
func (g generator) namespaceSelector() *metav1.LabelSelector {
	sel := &metav1.LabelSelector{}
	if g.parts.namespace != "" {
		sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: namespaceNameLabel, Operator: metav1.LabelSelectorOpIn, Values: []string{g.parts.namespace}})
	} else {
		if g.parts.namespaceSelector != nil {
			sel = g.parts.namespaceSelector.DeepCopy()
		}
		exempt := append([]string{"kube-system"}, g.opts.ExemptNamespaces...)
		slices.Sort(exempt)
		sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: namespaceNameLabel, Operator: metav1.LabelSelectorOpNotIn, Values: slices.Compact(exempt)})
	}
	if g.opts.OptOutLabel != "" {
		sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: g.opts.OptOutLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"disabled"}})
	}
	return sel
}

// rules are the rules of the policy the generated objects express.
func (g generator) rules() []string {
	var rules []string
	if len(g.allowed) > 0 {
		rules = append(rules, policy.RuleRegistries)
	}
	if g.tags != nil {
		rules = append(rules, policy.RuleTags)
	}
	return rules
}

// generator writes the CEL of one policy.
type generator struct {
	parts   policyParts
	allowed []policy.Glob
	images  []policy.Glob
	tags    *securityv1alpha1.TagRule
	opts    Options
}

// lit is a CEL string literal: Go's quoting is CEL's (\" \\ \n \t \xHH \uHHHH \UHHHHHHHH).
func lit(s string) string { return strconv.Quote(s) }

func listLit(values []string) string {
	quoted := make([]string, len(values))
	for i, v := range values {
		quoted[i] = lit(v)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

// matchConditions leave out what the cluster's controllers make for a controlling owner of a
// kind judged at its template: a pod of a ReplicaSet, StatefulSet, DaemonSet or Job, a ReplicaSet
// of a Deployment, a Job of a CronJob (the webhook also checks that the owner exists and runs the
// same images; CEL cannot read it, and only those users can make such objects).
func (g generator) matchConditions() []admissionregistrationv1.MatchCondition {
	users := g.opts.ControllerUsers
	if len(users) == 0 {
		return nil
	}
	owner := `has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(o, has(o.controller) && o.controller && (` +
		`(request.resource.resource == 'pods' && ((o.apiVersion.startsWith('apps/') && o.kind in ['ReplicaSet', 'StatefulSet', 'DaemonSet']) || (o.apiVersion.startsWith('batch/') && o.kind == 'Job'))) || ` +
		`(request.resource.resource == 'replicasets' && o.apiVersion.startsWith('apps/') && o.kind == 'Deployment') || ` +
		`(request.resource.resource == 'jobs' && o.apiVersion.startsWith('batch/') && o.kind == 'CronJob')))`
	return []admissionregistrationv1.MatchCondition{{
		Name:       "not-made-by-a-cluster-controller-for-its-owner",
		Expression: `!(request.userInfo.username in ` + listLit(users) + ` && ` + owner + `)`,
	}}
}

// specOf is the pod spec of x (an object of a matched resource).
func specOf(x string) string {
	return `request.resource.resource == 'pods' ? ` + x + `.spec : request.resource.resource == 'cronjobs' ? ` +
		x + `.spec.jobTemplate.spec.template.spec : ` + x + `.spec.template.spec`
}

// labelsOf and podLabelsOf are the labels of x and of its pods, as the webhook selects by either.
func labelsOf(x string) string {
	return `has(` + x + `.metadata.labels) ? ` + x + `.metadata.labels : {}`
}

func podLabelsOf(x string) string {
	tmpl := func(t string) string {
		return `has(` + t + `.metadata) && has(` + t + `.metadata.labels) ? ` + t + `.metadata.labels : {}`
	}
	return `request.resource.resource == 'pods' ? (` + labelsOf(x) + `) : request.resource.resource == 'cronjobs' ? (` +
		tmpl(x+".spec.jobTemplate.spec.template") + `) : (` + tmpl(x+".spec.template") + `)`
}

// specImages is a CEL list of elem for every image spec s runs, as workload.Containers lists
// them: init, regular and ephemeral containers, then image volumes. elem gets the CEL of the
// container's type, name and image.
func specImages(s string, elem func(typ, name, image string) string) string {
	list := func(field, typ string) string {
		return `(has(` + s + `.` + field + `) ? ` + s + `.` + field + `.map(c, ` + elem("'"+typ+"'", "c.name", "has(c.image) ? c.image : ''") + `) : [])`
	}
	return list("initContainers", "init") + ` + ` + list("containers", "regular") + ` + ` + list("ephemeralContainers", "ephemeral") +
		` + (has(` + s + `.volumes) ? ` + s + `.volumes.filter(v, has(v.image)).map(v, ` +
		elem("'volume'", "v.name", "has(v.image.reference) ? v.image.reference : ''") + `) : [])`
}

// containersOf lists every image of spec s as {type, name, image}.
func containersOf(s string) string {
	return specImages(s, func(typ, name, image string) string { return mapLit("type", typ, "name", name, "image", image) })
}

// refsOf lists the image references of spec s alone: no map is built for them.
func refsOf(s string) string {
	return specImages(s, func(_, _, image string) string { return "string(" + image + ")" })
}

// selectorCEL is sel over the label map l (a CEL expression), as metav1.LabelSelectorAsSelector
// reads it; nil or empty selects everything.
func selectorCEL(sel *metav1.LabelSelector, l string) string {
	if sel == nil {
		return "true"
	}
	var terms []string
	keys := make([]string, 0, len(sel.MatchLabels))
	for k := range sel.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		terms = append(terms, fmt.Sprintf("(%s in %s && %s[%s] == %s)", lit(k), l, l, lit(k), lit(sel.MatchLabels[k])))
	}
	for _, r := range sel.MatchExpressions {
		k := lit(r.Key)
		switch r.Operator {
		case metav1.LabelSelectorOpIn:
			terms = append(terms, fmt.Sprintf("(%s in %s && %s[%s] in %s)", k, l, l, k, listLit(r.Values)))
		case metav1.LabelSelectorOpNotIn:
			terms = append(terms, fmt.Sprintf("(!(%s in %s) || !(%s[%s] in %s))", k, l, l, k, listLit(r.Values)))
		case metav1.LabelSelectorOpExists:
			terms = append(terms, fmt.Sprintf("(%s in %s)", k, l))
		case metav1.LabelSelectorOpDoesNotExist:
			terms = append(terms, fmt.Sprintf("!(%s in %s)", k, l))
		}
	}
	if len(terms) == 0 {
		return "true"
	}
	return strings.Join(terms, " && ")
}

// mapLit is a CEL map literal of string values: the keys and expressions alternate. Each value is
// made a string, as the API server's CEL takes only maps whose values have one type.
func mapLit(pairs ...string) string {
	parts := make([]string, 0, len(pairs)/2)
	for i := 0; i < len(pairs); i += 2 {
		parts = append(parts, "'"+pairs[i]+"': string("+pairs[i+1]+")")
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// keep copies the fields of x into a map literal's pairs.
func keep(x string, fields ...string) []string {
	out := make([]string, 0, 2*len(fields))
	for _, f := range fields {
		out = append(out, f, x+"."+f)
	}
	return out
}

// Parsing a reference, one step per variable (CEL has no local bindings here), each step a list of
// string maps, one per image: parsed (grammar), split (@digest), named (:tag), hosted (host/path),
// hostport (host, port; the length and IPv6 checks), canon (canonical host and tag), images.
func parsingVariables() []admissionregistrationv1.Variable {
	dockerHub := listLit(append([]string{imageref.DockerHub}, imageref.DockerHubAliases()...))
	v := func(name, expr string) admissionregistrationv1.Variable {
		return admissionregistrationv1.Variable{Name: name, Expression: expr}
	}
	// The first path element of n.rname, and whether it is a host: it has a '.' or a ':' or is
	// localhost.
	first := `n.rname.substring(0, n.rname.indexOf('/'))`
	isHost := `n.rname.indexOf('/') >= 0 && (` + first + `.contains('.') || ` + first + `.contains(':') || ` + first + ` == 'localhost')`
	path := `h.host != '' ? h.rname.substring(h.rname.indexOf('/') + 1) : h.rname`
	noPort := `(h.port == '' || int(h.port) == 443)`
	return []admissionregistrationv1.Variable{
		v("parsed", `variables.containers.map(c, `+mapLit("name", "c.name", "ref", "c.image",
			"ok", `size(c.image) <= `+strconv.Itoa(policy.MaxReferenceLength)+` && c.image.matches(`+lit(policy.ReferencePattern)+`) ? 'y' : ''`)+`)`),
		v("split", `variables.parsed.filter(p, p.ok == 'y').map(p, `+mapLit(append(keep("p", "name", "ref"),
			"nt", `p.ref.indexOf('@') >= 0 ? p.ref.substring(0, p.ref.indexOf('@')) : p.ref`,
			"digest", `p.ref.indexOf('@') >= 0 ? p.ref.substring(p.ref.indexOf('@') + 1) : ''`)...)+`)`),
		v("named", `variables.split.map(s, `+mapLit(append(keep("s", "name", "ref", "digest"),
			"tag", `s.nt.lastIndexOf(':') > s.nt.lastIndexOf('/') ? s.nt.substring(s.nt.lastIndexOf(':') + 1) : ''`,
			"rname", `s.nt.lastIndexOf(':') > s.nt.lastIndexOf('/') ? s.nt.substring(0, s.nt.lastIndexOf(':')) : s.nt`)...)+`)`),
		v("hosted", `variables.named.map(n, `+mapLit(append(keep("n", "name", "ref", "digest", "tag", "rname"),
			"host", isHost+` ? `+first+`.lowerAscii() : ''`)...)+`)`),
		v("hostport", `variables.hosted.map(h, `+mapLit(append(keep("h", "name", "ref", "digest", "tag", "host"),
			"path", path,
			"hn", `h.host.startsWith('[') ? h.host.substring(0, h.host.indexOf(']') + 1) : h.host.indexOf(':') >= 0 ? h.host.substring(0, h.host.indexOf(':')) : h.host`,
			"port", `h.host.startsWith('[') ? (h.host.indexOf(']:') >= 0 ? h.host.substring(h.host.indexOf(']:') + 2) : '') : h.host.indexOf(':') >= 0 ? h.host.substring(h.host.indexOf(':') + 1) : ''`,
			"bad", `size(h.rname) > `+strconv.Itoa(policy.MaxNameLength)+` || size(`+path+`) < 2 ? 'length' : `+
				`h.host.startsWith('[') && !isIP(h.host.substring(1, h.host.indexOf(']'))) ? 'ipv6' : ''`)...)+`)`),
		// The canonical host: lower case, the port as a number and without 443, the shortest IPv6
		// form, docker.io for every name of Docker Hub; the tag latest when there is neither.
		v("canon", `variables.hostport.map(h, `+mapLit(append(keep("h", "name", "ref", "bad", "digest", "path"),
			"tag", `h.digest != '' ? '' : h.tag == '' ? 'latest' : h.tag`,
			"chost", `h.host == '' ? 'docker.io' : `+noPort+` && h.hn in `+dockerHub+` ? 'docker.io' : `+
				`(h.hn.startsWith('[') && h.bad == '' ? '[' + string(ip(h.hn.substring(1, size(h.hn) - 1))) + ']' : h.hn) + `+
				`(`+noPort+` ? '' : ':' + string(int(h.port)))`)...)+`)`),
		v("images", `variables.canon.map(c, `+mapLit(append(keep("c", "name", "ref", "bad", "digest", "tag"),
			"repo", `c.chost + '/' + (c.chost == 'docker.io' && !c.path.contains('/') ? 'library/' + c.path : c.path)`)...)+`)`),
	}
}

// globsCEL is whether the image whose canonical repository and tag are the CEL expressions repo
// and tag matches one of globs, each by its own regular expression.
func globsCEL(globs []policy.Glob, repo, tag string) string {
	terms := make([]string, len(globs))
	for n, g := range globs {
		subject := repo
		if g.Tagged() {
			subject = "(" + repo + " + ':' + " + tag + ")"
		}
		// A literal comparison costs the API server a small part of a regular expression's.
		switch form, prefix := g.Form(); form {
		case policy.GlobExact:
			terms[n] = subject + " == " + lit(prefix)
		case policy.GlobPrefix:
			terms[n] = subject + ".startsWith(" + lit(prefix) + ")"
		case policy.GlobPrefixNoSlash:
			terms[n] = "(" + subject + ".startsWith(" + lit(prefix) + ") && !" + subject + ".substring(" +
				strconv.Itoa(utf8.RuneCountInString(prefix)) + ").contains('/'))"
		default:
			terms[n] = subject + ".matches(" + lit(g.Regexp()) + ")"
		}
	}
	return "(" + strings.Join(terms, " || ") + ")"
}

// chunkSize bounds the CEL of the globs one step of the parse writes: well within CEL's size
// limit, and small enough that a step's cost per image (the API server counts a regular
// expression's length times the string's) leaves room for many images under the cost limit of
// one expression.
const chunkSize = 8000

// chunks is globsCEL of globs, cut into terms of at most chunkSize characters each.
func chunks(globs []policy.Glob, repo, tag string) []string {
	var out []string
	var current []policy.Glob
	size := 0
	for _, g := range globs {
		n := utf8.RuneCountInString(globsCEL([]policy.Glob{g}, repo, tag))
		if len(current) > 0 && size+n > chunkSize {
			out = append(out, globsCEL(current, repo, tag))
			current, size = nil, 0
		}
		current = append(current, g)
		size += n
	}
	if len(current) > 0 {
		out = append(out, globsCEL(current, repo, tag))
	}
	return out
}

// passesCEL is whether the image (its canonical repository, tag and digest as CEL expressions)
// passes the generated rules: one match.images does not select, or one from a trusted registry
// whose reference the tags rule accepts.
func (g generator) passesCEL(repo, tag, digest string) string {
	var ok []string
	if len(g.allowed) > 0 {
		ok = append(ok, globsCEL(g.allowed, repo, tag))
	}
	if t := g.tags; t != nil {
		if t.RequireDigest {
			ok = append(ok, digest+" != ''")
		}
		if t.DisallowLatest {
			ok = append(ok, tag+" != 'latest'")
		}
	}
	pass := "(" + strings.Join(ok, " && ") + ")"
	if len(g.images) > 0 {
		return "(!" + globsCEL(g.images, repo, tag) + " || " + pass + ")"
	}
	return pass
}

// The fast path: a reference already in canonical form (a lower-case host with a '.', or
// localhost, a port without leading zeros and not 443, no IPv6, not an alias of Docker Hub, nor
// docker.io without library/; or no host at all, a Docker Hub image) is judged from its own string, with no parsing steps. It only
// ever admits: anything else, and any image it does not pass, goes the whole way, which decides.
const (
	fastHost = `(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+|localhost)(?::[1-9][0-9]{0,4})?`
	// A first path element of at least 2 characters: the path is never too short.
	fastFirst     = `[a-z0-9]{2,}(?:(?:[._]|__|-+)[a-z0-9]+)*`
	fastNoDot     = `[a-z0-9]{2,}(?:(?:_|__|-+)[a-z0-9]+)*`
	fastSuffix    = `(?::` + policy.TagPattern + `)?(?:@` + policy.DigestPattern + `)?$`
	fastHosted    = `^` + fastHost + `/` + fastFirst + `(?:/` + policy.PathComponentPattern + `)*` + fastSuffix
	fastDockerHub = `^(?:` + fastNoDot + `(?:/` + policy.PathComponentPattern + `)+|` + fastFirst + `)` + fastSuffix
)

// fastPartsCEL is, for each image reference of the request, [name, :tag, digest, form] as
// written: form is 'h' for a canonical one with a host, 'd' for a Docker Hub one without, ” for
// any other (its other parts are then empty). In these forms a ':' is a port's only before a '/',
// so that regular expressions cut the parts at once.
func fastPartsCEL() string {
	// docker.io is canonical, but for an official image, which needs library/.
	aliases := listLit(imageref.DockerHubAliases())
	parts := `[r.find('^[^:@]+(?::[0-9]+/[^:@]+)?'), r.find(':[\\w][\\w.-]*(?:@|$)'), r.find('` + policy.DigestPattern + `$')`
	// Longer references are malformed.
	return `variables.refs.map(r, size(r) > ` + strconv.Itoa(policy.MaxReferenceLength) + ` ? ['', '', '', ''] : ` +
		`r.matches(` + lit(fastHosted) + `) && !r.contains(':443/') && !(r.substring(0, r.indexOf('/')).split(':')[0] in ` + aliases + `) && ` +
		`!(r.startsWith('docker.io/') && !r.substring(10).contains('/')) ? ` + parts + `, 'h'] : ` +
		`r.matches(` + lit(fastDockerHub) + `) && !r.startsWith('localhost/') ? ` + parts + `, 'd'] : ['', '', '', ''])`
}

// fastImagesCEL is, for each fast part, [canonical repository, tag, digest, form].
func fastImagesCEL() string {
	return `variables.fastParts.map(p, [string(p[3] == 'd' ? 'docker.io/' + (p[0].contains('/') ? p[0] : 'library/' + p[0]) : p[0]), ` +
		`string(p[2] != '' ? '' : p[1] == '' ? 'latest' : p[1].substring(1)), string(p[2]), string(p[3])])`
}

// variables: the pod spec, its containers (and the old object's, for updates), the labels the
// selector reads, the parsed images, and the failures, each as the webhook words it.
func (g generator) variables(fast bool) []admissionregistrationv1.Variable {
	v := func(name, expr string) admissionregistrationv1.Variable {
		return admissionregistrationv1.Variable{Name: name, Expression: expr}
	}
	vars := []admissionregistrationv1.Variable{
		v("spec", specOf("dyn(object)")),
		v("oldSpec", specOf("dyn(oldObject)")),
		v("containers", containersOf("variables.spec")),
		v("refs", refsOf("variables.spec")),
		v("oldContainers", `request.operation == 'UPDATE' ? `+containersOf("variables.oldSpec")+` : []`),
	}
	if g.parts.match.Selector != nil {
		vars = append(vars,
			v("labels", labelsOf("dyn(object)")),
			v("podLabels", podLabelsOf("dyn(object)")),
			v("oldLabels", labelsOf("dyn(oldObject)")),
			v("oldPodLabels", podLabelsOf("dyn(oldObject)")),
			v("selected", selectorCEL(g.parts.match.Selector, "variables.labels")+" || "+selectorCEL(g.parts.match.Selector, "variables.podLabels")),
			v("oldSelected", selectorCEL(g.parts.match.Selector, "variables.oldLabels")+" || "+selectorCEL(g.parts.match.Selector, "variables.oldPodLabels")),
		)
	}
	fastPass := "false"
	if fast {
		// The name as written (p[0] for both forms) is at most 255 characters, as the grammar says.
		fastPass = `variables.fastParts.all(p, size(p[0]) <= ` + strconv.Itoa(policy.MaxNameLength) + `) && ` +
			`variables.fastImages.all(p, p[3] != '' && ` + g.passesCEL("p[0]", "p[1]", "p[2]") + `)`
		vars = append(vars, v("fastParts", fastPartsCEL()), v("fastImages", fastImagesCEL()))
	}
	vars = append(vars, v("fastPass", fastPass))
	vars = append(vars, parsingVariables()...)
	// Whether each image is one match.images selects, and one from a trusted registry: each list of
	// globs written once, in as many steps as keep every expression well within CEL's size limit.
	matched, allowed := chunks(g.images, "i.repo", "i.tag"), chunks(g.allowed, "i.repo", "i.tag")
	if len(g.images) == 0 {
		matched = []string{"true"}
	}
	if len(g.allowed) == 0 {
		allowed = []string{"true"}
	}
	// One step per chunk: those of match.images, then those of registries.allowed, each carrying
	// what the steps before found.
	type step struct{ matched, allowed string }
	var steps []step
	for k, m := range matched {
		if k > 0 {
			m = "i.matched == 'y' || " + m
		}
		steps = append(steps, step{matched: m, allowed: "false"})
	}
	for k, a := range allowed {
		if k > 0 {
			a = "i.allowed == 'y' || " + a
		}
		if k == 0 {
			steps[len(steps)-1].allowed = a
			continue
		}
		steps = append(steps, step{matched: "i.matched == 'y'", allowed: a})
	}
	judged := "variables.images.filter(i, i.bad == '')"
	for k, st := range steps {
		name := "judged"
		if k > 0 {
			name = "judged" + strconv.Itoa(k)
		}
		vars = append(vars, v(name, judged+`.map(i, `+mapLit(append(keep("i", "repo", "tag", "digest"),
			"matched", st.matched+` ? 'y' : ''`, "allowed", st.allowed+` ? 'y' : ''`)...)+`)`))
		judged = "variables." + name
	}
	reference := `i.repo + (i.tag != '' ? ':' + i.tag : '') + (i.digest != '' ? '@' + i.digest : '')`
	shown := func(x string) string {
		return `(size(` + x + `.ref) > 128 ? ` + x + `.ref.substring(0, 128) + '...' : ` + x + `.ref)`
	}
	vars = append(vars, v("malformed",
		`variables.parsed.filter(p, p.ok != 'y').map(p, 'container ' + p.name + ': malformed image reference "' + `+shown("p")+` + '"') + `+
			`variables.images.filter(i, i.bad != '').map(i, 'container ' + i.name + ': malformed image reference "' + `+shown("i")+` + '"')`))
	var failures []string
	if len(g.allowed) > 0 {
		list := make([]string, len(g.allowed))
		for n, a := range g.allowed {
			list[n] = a.String()
		}
		failures = append(failures, judged+`.filter(i, i.matched == 'y' && i.allowed != 'y').map(i, `+
			reference+` + ': `+policy.RuleRegistries+`: ' + i.repo + `+lit(" is not from a trusted registry (allowed: "+strings.Join(list, ", ")+")")+`)`)
	}
	if t := g.tags; t != nil {
		const digestMsg, latestMsg = "the image must be referred to by digest (image@sha256:...)", "the latest tag (or no tag) is not allowed"
		var fails []string
		msg := lit(latestMsg)
		if t.RequireDigest {
			fails = append(fails, "i.digest == ''")
			msg = lit(digestMsg)
		}
		if t.DisallowLatest {
			fails = append(fails, "i.tag == 'latest'")
			if t.RequireDigest {
				msg = "(i.digest == '' ? " + lit(digestMsg) + " : " + lit(latestMsg) + ")"
			}
		}
		failures = append(failures, judged+`.filter(i, i.matched == 'y' && (`+strings.Join(fails, " || ")+`)).map(i, `+
			reference+` + ': `+policy.RuleTags+`: ' + `+msg+`)`)
	}
	return append(vars, v("failures", `variables.malformed + `+strings.Join(failures, " + ")))
}

// validation refuses (or warns of) a request with failures, unless it is an update that leaves the
// images as they were of an object the policy already applied to; the message is the webhook's.
// A malformed reference is refused wherever the policy applies, selected or not, as the webhook
// refuses it before it looks at any policy.
func (g generator) validation(action admissionregistrationv1.ValidationAction) admissionregistrationv1.Validation {
	unchanged := `(request.operation == 'UPDATE' && variables.containers == variables.oldContainers)`
	expr := `variables.fastPass || ` + unchanged + ` || size(variables.failures) == 0`
	failures := `variables.failures`
	if g.parts.match.Selector != nil {
		expr = `variables.fastPass || (` + unchanged[1:len(unchanged)-1] + ` && (!variables.selected || variables.oldSelected)) || ` +
			`(variables.selected ? size(variables.failures) == 0 : size(variables.malformed) == 0)`
		failures = `(variables.selected ? variables.failures : variables.malformed)`
	}
	prefix := "denied by ImageGuard: " + g.parts.ref + ": "
	if action == admissionregistrationv1.Warn {
		prefix = "ImageGuard: " + g.parts.ref + ": "
	}
	return admissionregistrationv1.Validation{
		Expression: expr,
		// The API server evaluates the message of every request, admitted or not (in a context of its
		// own, where the variables are evaluated again): the failures are listed only when it refuses.
		MessageExpression: `(` + expr + `) ? '' : ` + lit(prefix) + ` + ` + failures + `.join('; ')`,
		// When the list of failures is too long for a message.
		Message: prefix + "an image breaks its " + strings.Join(g.rules(), " or ") + " rule, or its reference is malformed",
		Reason:  ptr.To(metav1.StatusReasonForbidden),
	}
}
