package workload

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
	"github.com/imageguard/imageguard/internal/scheme"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func controlledBy(apiVersion, kind, name string) []metav1.OwnerReference {
	return []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: name, UID: types.UID(kind + "-" + name), Controller: ptr.To(true)}}
}

func podSpec(images ...string) corev1.PodSpec {
	var spec corev1.PodSpec
	for i, img := range images {
		spec.Containers = append(spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img})
	}
	return spec
}

func template(images ...string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{Spec: podSpec(images...)}
}

func meta(name string, owners ...metav1.OwnerReference) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name), OwnerReferences: owners}
}

func newClient(objs ...client.Object) client.Client {
	b := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(objs...)
	for name, index := range ReportIndexes {
		b = b.WithIndex(&securityv1alpha1.ImageScanReport{}, name, index)
	}
	return b.Build()
}

func TestWorkloads(t *testing.T) {
	g := NewWithT(t)
	c := newClient(
		&appsv1.Deployment{ObjectMeta: meta("web"), Spec: appsv1.DeploymentSpec{Template: template("r.example.com/web:1")}},
		&appsv1.ReplicaSet{ObjectMeta: meta("web-1", controlledBy("apps/v1", "Deployment", "web")[0]), Spec: appsv1.ReplicaSetSpec{Template: template("r.example.com/web:1")}},
		&corev1.Pod{ObjectMeta: meta("web-1-a", controlledBy("apps/v1", "ReplicaSet", "web-1")[0]), Spec: podSpec("r.example.com/web:1")},
		&appsv1.ReplicaSet{ObjectMeta: meta("lonely"), Spec: appsv1.ReplicaSetSpec{Template: template("r.example.com/lonely:1")}},
		&appsv1.StatefulSet{ObjectMeta: meta("db", controlledBy("example.com/v1", "Postgres", "main")[0]), Spec: appsv1.StatefulSetSpec{Template: template("r.example.com/pg:16")}},
		&appsv1.DaemonSet{ObjectMeta: meta("agent"), Spec: appsv1.DaemonSetSpec{Template: template("r.example.com/agent:1")}},
		&batchv1.CronJob{ObjectMeta: meta("nightly"), Spec: batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: template("r.example.com/job:1")}}}},
		&batchv1.Job{ObjectMeta: meta("nightly-1", controlledBy("batch/v1", "CronJob", "nightly")[0]), Spec: batchv1.JobSpec{Template: template("r.example.com/job:1")}},
		&batchv1.Job{ObjectMeta: meta("once"), Spec: batchv1.JobSpec{Template: template("r.example.com/once:1")}},
		// Argo Rollouts: a ReplicaSet controlled by a Rollout, two pods of two versions.
		&appsv1.ReplicaSet{ObjectMeta: meta("canary-1", controlledBy("argoproj.io/v1alpha1", "Rollout", "canary")[0]), Spec: appsv1.ReplicaSetSpec{Template: template("r.example.com/canary:1")}},
		&corev1.Pod{ObjectMeta: meta("canary-1-a", controlledBy("apps/v1", "ReplicaSet", "canary-1")[0]), Spec: podSpec("r.example.com/canary:1")},
		&appsv1.ReplicaSet{ObjectMeta: meta("canary-2", controlledBy("argoproj.io/v1alpha1", "Rollout", "canary")[0]), Spec: appsv1.ReplicaSetSpec{Template: template("r.example.com/canary:2")}},
		&corev1.Pod{ObjectMeta: meta("canary-2-a", controlledBy("apps/v1", "ReplicaSet", "canary-2")[0]), Spec: podSpec("r.example.com/canary:2")},
		// A Tekton TaskRun owns its pod directly.
		&corev1.Pod{ObjectMeta: meta("build-pod", controlledBy("tekton.dev/v1", "TaskRun", "build")[0]), Spec: podSpec("r.example.com/kaniko:1")},
		// A pod whose ReplicaSet is gone (or not cached yet) is judged at the ReplicaSet, in the table.
		&corev1.Pod{ObjectMeta: meta("orphan", controlledBy("apps/v1", "ReplicaSet", "gone")[0]), Spec: podSpec("r.example.com/orphan:1")},
		&corev1.Pod{ObjectMeta: meta("debug"), Spec: corev1.PodSpec{
			InitContainers:      []corev1.Container{{Name: "init", Image: "r.example.com/init:1"}},
			Containers:          []corev1.Container{{Name: "app", Image: "r.example.com/app:1"}},
			EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "dbg", Image: "r.example.com/dbg:1"}}},
			Volumes: []corev1.Volume{
				{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "models", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: "r.example.com/models:1"}}},
			},
		}},
	)
	ws, err := NewGatherer(c, "").Workloads(context.Background(), "shop")
	g.Expect(err).NotTo(HaveOccurred())
	got := map[string][]string{}
	for _, w := range ws {
		var images []string
		for _, ct := range w.Containers {
			images = append(images, string(ct.Type)+":"+ct.Image)
		}
		got[w.Key()] = images
		g.Expect(w.Object).NotTo(BeNil())
	}
	g.Expect(got).To(Equal(map[string][]string{
		"shop/Deployment/web":    {"regular:r.example.com/web:1"},
		"shop/ReplicaSet/lonely": {"regular:r.example.com/lonely:1"},
		"shop/StatefulSet/db":    {"regular:r.example.com/pg:16"},
		"shop/DaemonSet/agent":   {"regular:r.example.com/agent:1"},
		"shop/CronJob/nightly":   {"regular:r.example.com/job:1"},
		"shop/Job/once":          {"regular:r.example.com/once:1"},
		"shop/Rollout/canary":    {"regular:r.example.com/canary:1", "regular:r.example.com/canary:2"},
		"shop/TaskRun/build":     {"regular:r.example.com/kaniko:1"},
		"shop/Pod/debug":         {"init:r.example.com/init:1", "regular:r.example.com/app:1", "ephemeral:r.example.com/dbg:1", "volume:r.example.com/models:1"},
	}))
	for _, w := range ws {
		if w.Kind == "Rollout" {
			g.Expect(w.APIVersion).To(Equal("argoproj.io/v1alpha1"))
			g.Expect(w.Object.GetObjectKind().GroupVersionKind().Kind).To(Equal("Rollout"))
		}
	}
}

func TestTopOwner(t *testing.T) {
	c := newClient(
		&appsv1.ReplicaSet{ObjectMeta: meta("web-1", controlledBy("apps/v1", "Deployment", "web")[0])},
		&batchv1.Job{ObjectMeta: meta("nightly-1", controlledBy("batch/v1", "CronJob", "nightly")[0])},
		&appsv1.ReplicaSet{ObjectMeta: meta("canary-1", controlledBy("argoproj.io/v1alpha1", "Rollout", "canary")[0])},
		&appsv1.ReplicaSet{ObjectMeta: meta("lonely")},
	)
	tests := map[string]struct {
		owners    []metav1.OwnerReference
		want      string
		wantTable bool
	}{
		"a bare pod":               {want: "Pod/p", wantTable: true},
		"a Deployment's":           {owners: controlledBy("apps/v1", "ReplicaSet", "web-1"), want: "Deployment/web", wantTable: true},
		"a CronJob's":              {owners: controlledBy("batch/v1", "Job", "nightly-1"), want: "CronJob/nightly", wantTable: true},
		"a Rollout's":              {owners: controlledBy("apps/v1", "ReplicaSet", "canary-1"), want: "Rollout/canary"},
		"a ReplicaSet's":           {owners: controlledBy("apps/v1", "ReplicaSet", "lonely"), want: "ReplicaSet/lonely", wantTable: true},
		"a StatefulSet's":          {owners: controlledBy("apps/v1", "StatefulSet", "db"), want: "StatefulSet/db", wantTable: true},
		"an operator's":            {owners: controlledBy("tekton.dev/v1", "TaskRun", "build"), want: "TaskRun/build"},
		"a missing ReplicaSet's":   {owners: controlledBy("apps/v1", "ReplicaSet", "gone"), want: "ReplicaSet/gone", wantTable: true},
		"not a controller's":       {owners: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-1"}}, want: "Pod/p", wantTable: true},
		"a same-named other group": {owners: controlledBy("example.com/v1", "Deployment", "web"), want: "Deployment/web"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			pod := &corev1.Pod{ObjectMeta: meta("p", tt.owners...)}
			owner, err := TopOwner(context.Background(), c, pod)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(owner.Kind + "/" + owner.Name).To(Equal(tt.want))
			g.Expect(owner.InTable()).To(Equal(tt.wantTable))
		})
	}
}

func scannedReport(ns, name, image, dig string, tags []string, critical int32, created, scanned time.Time) *securityv1alpha1.ImageScanReport {
	return &securityv1alpha1.ImageScanReport{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, CreationTimestamp: metav1.NewTime(created)},
		Spec:       securityv1alpha1.ImageScanReportSpec{Image: image, Digest: dig, Tags: tags},
		Status: securityv1alpha1.ImageScanReportStatus{
			LastScanTime: ptr.To(metav1.NewTime(scanned)),
			Summary:      &securityv1alpha1.VulnerabilitySummary{Critical: critical, Total: critical},
			Conditions:   []metav1.Condition{{Type: securityv1alpha1.ConditionScanned, Status: metav1.ConditionTrue, Reason: "ScanSucceeded"}},
		},
	}
}

func TestReport(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	other := "sha256:" + fmt.Sprintf("%064x", 7)
	unscannedNew := &securityv1alpha1.ImageScanReport{
		ObjectMeta: metav1.ObjectMeta{Name: "moved", Namespace: "shop", CreationTimestamp: metav1.NewTime(t0.Add(2 * time.Hour))},
		Spec:       securityv1alpha1.ImageScanReportSpec{Image: "r.example.com/moved", Digest: other, Tags: []string{"1"}},
	}
	c := newClient(
		scannedReport("other", "app-a", "r.example.com/app", digest, []string{"1"}, 1, t0, t0),
		scannedReport("third", "app-b", "r.example.com/app", digest, []string{"1"}, 2, t0, t0.Add(time.Hour)),
		scannedReport("shop", "tagged", "r.example.com/tagged", "sha256:"+fmt.Sprintf("%064x", 8), []string{"1.0"}, 3, t0, t0),
		scannedReport("shop", "moved-old", "r.example.com/moved", "sha256:"+fmt.Sprintf("%064x", 9), []string{"1"}, 4, t0, t0),
		unscannedNew,
	)
	gatherer := NewGatherer(c, "")
	tests := map[string]struct {
		img          policy.Image
		wantCritical int32 // -1: no report
	}{
		"by digest, another namespace, newest scan": {img: policy.Image{Repository: "r.example.com/app", Digest: digest}, wantCritical: 2},
		"by tag in the namespace":                   {img: policy.Image{Repository: "r.example.com/tagged", Tag: "1.0"}, wantCritical: 3},
		"a tag seen in another namespace only":      {img: policy.Image{Repository: "r.example.com/app", Tag: "1"}, wantCritical: -1},
		"a moved tag: the newest digest, unscanned": {img: policy.Image{Repository: "r.example.com/moved", Tag: "1"}, wantCritical: -1},
		"never seen": {img: policy.Image{Repository: "r.example.com/new", Tag: "1"}, wantCritical: -1},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			r := gatherer.Report(context.Background(), "shop", tt.img)
			if tt.wantCritical < 0 {
				g.Expect(r).To(BeNil())
				return
			}
			g.Expect(r).NotTo(BeNil())
			g.Expect(r.Summary.Critical).To(Equal(tt.wantCritical))
		})
	}
}

func TestPoliciesAndCompiledState(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a"}}}
	objs := []client.Object{ns,
		&securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "local", Namespace: "shop", UID: "u-local"}},
		&securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "elsewhere", Namespace: "other", UID: "u-elsewhere"}},
		&securityv1alpha1.ClusterImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "team-a", UID: "u-a"}, Spec: securityv1alpha1.ClusterImagePolicySpec{
			Match: securityv1alpha1.ClusterImageMatch{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}}},
		&securityv1alpha1.ClusterImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "team-b", UID: "u-b"}, Spec: securityv1alpha1.ClusterImagePolicySpec{
			Match: securityv1alpha1.ClusterImageMatch{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}}}},
		&securityv1alpha1.ClusterImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: "broken", UID: "u-broken"}, Spec: securityv1alpha1.ClusterImagePolicySpec{
			Rules: securityv1alpha1.PolicyRules{Registries: &securityv1alpha1.RegistryRule{Allowed: []string{""}}}}},
	}
	c := newClient(objs...)
	gatherer := NewGatherer(c, "")
	policies, err := gatherer.PoliciesFor(ctx, "shop")
	g.Expect(err).NotTo(HaveOccurred())
	var refs []string
	for _, p := range policies {
		refs = append(refs, p.Ref)
	}
	g.Expect(refs).To(Equal([]string{"ClusterImagePolicy/team-a", "ImagePolicy/shop/local"}))
	broken := gatherer.Compile(objs[len(objs)-1])
	g.Expect(broken.Err).To(MatchError(ContainSubstring("registries.allowed")))

	// A compiled policy is reused while its generation stands, and dropped when it is deleted.
	g.Expect(gatherer.Compile(objs[1])).To(BeIdenticalTo(policies[1]))
	g.Expect(gatherer.Compiled()).To(Equal(4))
	gatherer.Forget("ImagePolicy/shop/local")
	g.Expect(gatherer.Compiled()).To(Equal(3))
	// Deleted policies never forgotten by name (another replica deleted them) are swept as the
	// map grows.
	for i := range 200 {
		gatherer.Compile(&securityv1alpha1.ImagePolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint(i), Namespace: "gone", UID: types.UID(fmt.Sprint("gone-", i))}})
	}
	g.Expect(gatherer.Compiled()).To(BeNumerically("<", 130))
}
