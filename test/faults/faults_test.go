// Package faults runs the real `imageguard controller` process against a real control plane and
// an in-process registry, injects one fault at a time (a failing registry, a bad DB artifact, the
// API server going away, SIGKILL of the controller mid-analysis and mid-swap) and checks, for
// each, the typed condition or error it ends in, that the reports recover once the fault clears,
// that nothing kept is lost, and how many image pulls it cost. It ends with a table of the faults
// and "N passed, M failed" (also written to $FAULT_TABLE, which `make test` prints).
package faults

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/testenv"
	"github.com/imageguard/imageguard/internal/testsuite"
	"github.com/imageguard/imageguard/internal/testutil"
)

var (
	env    *testenv.Env
	binary string
	rows   []row
)

// row is one line of the fault table.
type row struct {
	fault, wants, got string
	pulls             int
	passed            bool
}

const advisories = `
updatedAt: 2026-11-01T00:00:00Z
advisories:
- {id: CVE-2026-1001, ecosystem: alpine 3.22, package: openssl, fixedVersion: 3.5.2-r0, severity: CRITICAL}
- {id: CVE-2026-1002, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r20, severity: HIGH}
`

const (
	dbRepo  = "faults/trivy-db"
	timeout = 90 * time.Second
)

func TestMain(m *testing.M) {
	var err error
	if env, err = testenv.Start(testenv.Options{RestartableAPIServer: true}); err != nil {
		fmt.Fprintf(os.Stderr, "cannot start the control plane: %v\n", err)
		os.Exit(1)
	}
	code := 1
	if binary, err = build(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	_ = env.Stop()
	if binary != "" {
		_ = os.RemoveAll(filepath.Dir(binary))
	}
	printTable()
	os.Exit(code)
}

// build compiles the controller binary the way `make build` does.
func build() (string, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "imageguard-faults-")
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "imageguard")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/imageguard")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOEXPERIMENT=jsonv2")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w: %s", err, b)
	}
	return out, nil
}

func printTable() {
	if len(rows) == 0 {
		return
	}
	var buf bytes.Buffer
	w := tabwriter.NewWriter(&buf, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FAULT\tMUST END IN\tENDED IN\tIMAGE PULLS\tRESULT")
	passed := 0
	for _, r := range rows {
		result := "FAIL"
		if r.passed {
			result, passed = "pass", passed+1
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", r.fault, r.wants, r.got, r.pulls, result)
	}
	_ = w.Flush()
	fmt.Fprintf(&buf, "%d passed, %d failed\n", passed, len(rows)-passed)
	fmt.Print(buf.String())
	if p := os.Getenv("FAULT_TABLE"); p != "" {
		_ = os.WriteFile(p, buf.Bytes(), 0o644)
	}
}

// record adds t's row to the table when t ends.
func record(t *testing.T, fault, wants string, got *string, pulls func() int) {
	t.Cleanup(func() {
		rows = append(rows, row{fault: fault, wants: wants, got: *got, pulls: pulls(), passed: !t.Failed()})
	})
}

// router answers faults per repository and counts each repository's blob GETs.
type router struct {
	mu       sync.Mutex
	faults   map[string]testutil.FaultFunc
	blobGETs map[string]int
	// onBlob is called for each blob GET before it is answered.
	onBlob func(repo, digest string)
}

var pathPattern = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs)/([^/]+)$`)

func (r *router) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		m := pathPattern.FindStringSubmatch(req.URL.Path)
		if m == nil {
			next.ServeHTTP(w, req)
			return
		}
		repo := m[1]
		r.mu.Lock()
		fault := r.faults[repo]
		onBlob := r.onBlob
		if m[2] == "blobs" && req.Method == http.MethodGet {
			r.blobGETs[repo]++
		}
		r.mu.Unlock()
		if m[2] == "blobs" && req.Method == http.MethodGet && onBlob != nil {
			onBlob(repo, m[3])
		}
		if fault != nil && fault(w, req) {
			return
		}
		next.ServeHTTP(w, req)
	})
}

func (r *router) set(repo string, f testutil.FaultFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f == nil {
		delete(r.faults, repo)
		return
	}
	r.faults[repo] = f
}

func (r *router) pulls(repo string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blobGETs[repo]
}

func (r *router) setOnBlob(f func(repo, digest string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onBlob = f
}

// process is a running `imageguard controller`.
type process struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startController(t *testing.T, reg *testutil.Registry, cache string, extra ...string) *process {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "controller.log")
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"controller",
		"--kubeconfig=" + env.Kubeconfig, "--cache-dir=" + cache,
		"--db-repository=" + reg.Host() + "/" + dbRepo + ":2", "--insecure-registries=" + reg.Host(),
		"--webhook-port=0", "--metrics-bind-address=0", "--health-probe-bind-address=0", "--receiver-bind-address=0",
		"--registry-timeout=2s", "--db-check-interval=2s", "--scan-concurrency=2", "--reconcile-timeout=30s",
	}, extra...)
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, log: logFile, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			raw, _ := os.ReadFile(logFile)
			t.Logf("controller log (last 6 KiB):\n%s", tail(raw, 6<<10))
		}
	})
	return p
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (p *process) kill() { _ = p.cmd.Process.Signal(syscall.SIGKILL) }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process as the kubelet does: SIGTERM, then SIGKILL after a grace period.
func (p *process) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.kill()
		<-p.done
	}
}

func (p *process) logged() string {
	raw, _ := os.ReadFile(p.log)
	return string(raw)
}

// The helpers below read and write the cluster as a user would.

func createNamespace(g Gomega, name string) {
	g.Expect(env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
}

func createPod(g Gomega, ns, name, image string) {
	g.Expect(env.Client.Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}},
	})).To(Succeed())
}

// reportOf returns the report of digest in ns.
func reportOf(g Gomega, ns, digest string) *securityv1alpha1.ImageScanReport {
	list := &securityv1alpha1.ImageScanReportList{}
	g.Expect(env.Client.List(context.Background(), list, client.InNamespace(ns))).To(Succeed())
	for i := range list.Items {
		if list.Items[i].Spec.Digest == digest {
			return &list.Items[i]
		}
	}
	g.Expect(list.Items).To(ContainElement(HaveField("Spec.Digest", digest)), "no report of %s in %s", digest, ns)
	return nil
}

// scanned returns the status and reason of the report's Scanned condition.
func scanned(r *securityv1alpha1.ImageScanReport) (metav1.ConditionStatus, string) {
	c := meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionScanned)
	if c == nil {
		return metav1.ConditionUnknown, ""
	}
	return c.Status, c.Reason
}

func waitReady(g Gomega, ns, digest string) *securityv1alpha1.ImageScanReport {
	var r *securityv1alpha1.ImageScanReport
	g.Eventually(func(g Gomega) {
		r = reportOf(g, ns, digest)
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue(), "conditions: %v", r.Status.Conditions)
	}).WithTimeout(timeout).WithPolling(250 * time.Millisecond).Should(Succeed())
	return r
}

func waitScanFailed(g Gomega, ns, digest, reason string) *securityv1alpha1.ImageScanReport {
	var r *securityv1alpha1.ImageScanReport
	g.Eventually(func(g Gomega) {
		r = reportOf(g, ns, digest)
		status, got := scanned(r)
		g.Expect(status).To(Equal(metav1.ConditionFalse), "conditions: %v", r.Status.Conditions)
		g.Expect(got).To(Equal(reason), "conditions: %v", r.Status.Conditions)
		g.Expect(meta.IsStatusConditionFalse(r.Status.Conditions, securityv1alpha1.ConditionReady)).To(BeTrue())
	}).WithTimeout(timeout).WithPolling(250 * time.Millisecond).Should(Succeed())
	return r
}

// hangUp closes the connection without an answer, as a registry that is down behind a load
// balancer does.
func hangUp(w http.ResponseWriter, _ *http.Request) bool {
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		_ = conn.Close()
	}
	return true
}

func status(code int, header ...string) testutil.FaultFunc {
	return func(w http.ResponseWriter, _ *http.Request) bool {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"errors":[{"code":"UNKNOWN","message":"injected by the fault suite"}]}`)
		return true
	}
}

// slow answers after the registry timeout the controller is given (2s).
func slow(w http.ResponseWriter, r *http.Request) bool {
	select {
	case <-time.After(5 * time.Second):
	case <-r.Context().Done():
	}
	return false
}

// onLayer applies f to GETs of the blob layer only (manifest and config pass).
func onLayer(layer v1.Hash, f func(w http.ResponseWriter, body []byte) bool, blobs map[v1.Hash][]byte) testutil.FaultFunc {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
			return false
		}
		return f(w, blobs[layer])
	}
}

func truncated(w http.ResponseWriter, body []byte) bool {
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body[:len(body)/2])
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		_ = conn.Close()
	}
	return true
}

func wrongDigest(w http.ResponseWriter, body []byte) bool {
	other := bytes.Repeat([]byte{0x5a}, len(body))
	w.Header().Set("Content-Length", fmt.Sprint(len(other)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(other)
	return true
}

// lastLayer returns img's last layer digest and its compressed bytes.
func lastLayer(t *testing.T, img v1.Image) (v1.Hash, []byte) {
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	l := layers[len(layers)-1]
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return d, b
}

// freePort returns a TCP port free on 127.0.0.1 now.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// admit sends the webhook on port an AdmissionReview creating a Deployment of image in ns, as
// the API server would.
func admit(port int, ns, image string) (*admissionv1.AdmissionResponse, error) {
	d := &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns}}
	d.Spec.Template.Spec.Containers = []corev1.Container{{Name: "app", Image: image}}
	raw, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "faults", Kind: metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"},
			Resource:  metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"},
			Namespace: ns, Name: "web", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		return nil, err
	}
	// The serving certificate is the replicas' own CA's; what is checked here is the answer.
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // see above
	out, err := testsuite.PostReview(c, fmt.Sprintf("https://127.0.0.1:%d/validate-workloads", port), body)
	if err != nil {
		return nil, err
	}
	if out.Response.Result == nil && !out.Response.Allowed {
		return nil, fmt.Errorf("no response")
	}
	if out.Response.Result == nil {
		out.Response.Result = &metav1.Status{}
	}
	return out.Response, nil
}

// lyingImage is an image whose manifest is raw, whatever its layers are.
type lyingImage struct {
	v1.Image
	raw []byte
}

func (l lyingImage) RawManifest() ([]byte, error) { return l.raw, nil }

func (l lyingImage) Manifest() (*v1.Manifest, error) { return v1.ParseManifest(bytes.NewReader(l.raw)) }

func (l lyingImage) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(l.raw))
	return h, err
}

func (l lyingImage) Size() (int64, error) { return int64(len(l.raw)), nil }

// dbArtifact is a one-layer artifact with the given layer bytes and media type.
func dbArtifact(t *testing.T, layer []byte, mediaType types.MediaType) v1.Image {
	img, err := testutil.OneLayerArtifact(layer, mediaType)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func dbSpec(t *testing.T, extra string) *testutil.DBSpec {
	spec, err := testutil.ParseAdvisories([]byte(advisories + extra))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func dbArchive(t *testing.T, spec *testutil.DBSpec) []byte {
	dir := t.TempDir()
	if err := testutil.BuildDB(dir, spec); err != nil {
		t.Fatal(err)
	}
	archive, err := testutil.DBArchive(dir)
	if err != nil {
		t.Fatal(err)
	}
	return archive
}

// dbOf returns the digest of the DB each report in namespaces was matched against.
func dbOf(g Gomega, namespaces ...string) map[string]string {
	out := map[string]string{}
	for _, ns := range namespaces {
		list := &securityv1alpha1.ImageScanReportList{}
		g.Expect(env.Client.List(context.Background(), list, client.InNamespace(ns))).To(Succeed())
		for _, r := range list.Items {
			if r.Status.VulnerabilityDB != nil {
				out[ns+"/"+r.Name] = r.Status.VulnerabilityDB.Digest
			}
		}
	}
	return out
}

func allOn(m map[string]string, digest string) bool {
	for _, d := range m {
		if d != digest {
			return false
		}
	}
	return len(m) > 0
}

// TestFaults runs the faults in order against one cluster, registry and cache.
func TestFaults(t *testing.T) {
	rt := &router{faults: map[string]testutil.FaultFunc{}, blobGETs: map[string]int{}}
	reg := testutil.NewRegistry(t, testutil.WithHandlerWrapper(rt.wrap))
	firstDB := reg.PublishDB(t, dbRepo, "2", dbSpec(t, ""))
	cache := t.TempDir()
	ctrlProc := startController(t, reg, cache, "--rescan-interval=8s")

	// kept are the namespace and digest of every report that was Ready: none may be lost.
	type kept struct{ ns, digest, repo string }
	var keep []kept

	// Registry faults: each on its own repository, while the others keep working.
	registryFaults := []struct {
		name, wants string
		fault       func(img v1.Image) testutil.FaultFunc
	}{
		{"registry down (connection closed)", securityv1alpha1.ReasonScanFailed, func(v1.Image) testutil.FaultFunc { return hangUp }},
		{"registry slower than --registry-timeout", securityv1alpha1.ReasonTimeout, func(v1.Image) testutil.FaultFunc { return slow }},
		{"401", securityv1alpha1.ReasonUnauthorized, func(v1.Image) testutil.FaultFunc { return status(http.StatusUnauthorized) }},
		{"403", securityv1alpha1.ReasonUnauthorized, func(v1.Image) testutil.FaultFunc { return status(http.StatusForbidden) }},
		{"404", securityv1alpha1.ReasonNotFound, func(v1.Image) testutil.FaultFunc { return status(http.StatusNotFound) }},
		{"429 with Retry-After", securityv1alpha1.ReasonRateLimited, func(v1.Image) testutil.FaultFunc {
			return status(http.StatusTooManyRequests, "Retry-After", "2")
		}},
		{"500", securityv1alpha1.ReasonScanFailed, func(v1.Image) testutil.FaultFunc { return status(http.StatusInternalServerError) }},
		{"truncated blob", securityv1alpha1.ReasonScanFailed, func(img v1.Image) testutil.FaultFunc {
			d, b := lastLayer(t, img)
			return onLayer(d, truncated, map[v1.Hash][]byte{d: b})
		}},
		{"blob with a wrong digest", securityv1alpha1.ReasonUnsupportedImage, func(img v1.Image) testutil.FaultFunc {
			d, b := lastLayer(t, img)
			return onLayer(d, wrongDigest, map[v1.Hash][]byte{d: b})
		}},
	}
	for i, f := range registryFaults {
		t.Run(f.name, func(t *testing.T) {
			g := NewWithT(t)
			ns, repo := fmt.Sprintf("fault-%d", i), fmt.Sprintf("faults/image-%d", i)
			got := ""
			record(t, f.name, "Scanned=False "+f.wants+", then Ready", &got, func() int { return rt.pulls(repo) })
			img := testsuite.Image(repo)
			_, _, digest := testsuite.Push(t, reg, repo, img)
			rt.set(repo, f.fault(img))
			createNamespace(g, ns)
			createPod(g, ns, "app", reg.Host()+"/"+repo+"@"+digest)
			r := waitScanFailed(g, ns, digest, f.wants)
			_, got = scanned(r)
			rt.set(repo, nil)
			waitReady(g, ns, digest)
			got += ", then Ready"
			keep = append(keep, kept{ns, digest, repo})
		})
	}

	t.Run("manifest that lies about a layer's size", func(t *testing.T) {
		g := NewWithT(t)
		const ns, repo = "fault-lying", "faults/lying"
		got := ""
		record(t, "manifest that lies about sizes", "Scanned=False UnsupportedImage, Stalled", &got, func() int { return rt.pulls(repo) })
		img := testsuite.Image(repo)
		m, err := img.Manifest()
		g.Expect(err).NotTo(HaveOccurred())
		m.Layers[len(m.Layers)-1].Size /= 2
		raw, err := json.Marshal(m)
		g.Expect(err).NotTo(HaveOccurred())
		lying := lyingImage{Image: img, raw: raw}
		_, _, digest := testsuite.Push(t, reg, repo, lying)
		createNamespace(g, ns)
		createPod(g, ns, "app", reg.Host()+"/"+repo+"@"+digest)
		r := waitScanFailed(g, ns, digest, securityv1alpha1.ReasonUnsupportedImage)
		_, got = scanned(r)
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionStalled)).To(BeTrue())
		got += ", Stalled"
	})

	namespaces := func() []string {
		var out []string
		for _, k := range keep {
			out = append(out, k.ns)
		}
		return out
	}
	pullsOfKept := func() int {
		n := 0
		for _, k := range keep {
			n += rt.pulls(k.repo)
		}
		return n
	}

	t.Run("kept inventories are never pulled again", func(t *testing.T) {
		g := NewWithT(t)
		got := ""
		before := pullsOfKept()
		record(t, "rescans of every recovered report", "no image pull", &got, func() int { return pullsOfKept() - before })
		// A rescan cycle (8s, with jitter) re-matches every report from its kept inventory.
		g.Consistently(pullsOfKept).WithTimeout(12 * time.Second).Should(Equal(before))
		for _, k := range keep {
			waitReady(g, k.ns, k.digest)
		}
		got = "no image pull"
	})

	// DB faults: the old DB keeps serving, the error is logged typed, and the next good DB is
	// taken.
	currentDB := firstDB.String()
	dbFaults := []struct {
		name, wants string
		publish     func(t *testing.T)
	}{
		{"DB artifact corrupt (not gzip)", "UnsupportedImage: the DB layer is not gzip", func(t *testing.T) {
			reg.Push(t, dbRepo, "2", dbArtifact(t, []byte("not a gzip stream"), testutil.DBLayerMediaType))
		}},
		{"DB artifact truncated", "UnsupportedImage: the DB layer", func(t *testing.T) {
			a := dbArchive(t, dbSpec(t, ""))
			reg.Push(t, dbRepo, "2", dbArtifact(t, a[:len(a)/2], testutil.DBLayerMediaType))
		}},
		{"DB artifact of a wrong media type", "UnsupportedImage: the artifact is not a Trivy vulnerability DB", func(t *testing.T) {
			reg.Push(t, dbRepo, "2", dbArtifact(t, dbArchive(t, dbSpec(t, "")), types.OCILayer))
		}},
	}
	for i, f := range dbFaults {
		t.Run(f.name, func(t *testing.T) {
			g := NewWithT(t)
			got := ""
			before := pullsOfKept()
			record(t, f.name, "old DB serves; "+f.wants+"; next DB taken", &got, func() int { return pullsOfKept() - before })
			logged := strings.Count(ctrlProc.logged(), f.wants)
			f.publish(t)
			g.Eventually(func() int { return strings.Count(ctrlProc.logged(), f.wants) }).WithTimeout(timeout).Should(BeNumerically(">", logged))
			got = "old DB serves; " + f.wants
			g.Expect(allOn(dbOf(g, namespaces()...), currentDB)).To(BeTrue())
			for _, k := range keep {
				waitReady(g, k.ns, k.digest)
			}
			next := reg.PublishDB(t, dbRepo, "2", dbSpec(t, fmt.Sprintf("- {id: CVE-2026-20%02d, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r21, severity: LOW}\n", i)))
			g.Eventually(func(g Gomega) { g.Expect(allOn(dbOf(g, namespaces()...), next.String())).To(BeTrue()) }).WithTimeout(timeout).Should(Succeed())
			currentDB = next.String()
			got += "; next DB taken"
			g.Expect(pullsOfKept()).To(Equal(before))
		})
	}

	t.Run("DB registry down during the download", func(t *testing.T) {
		g := NewWithT(t)
		got := ""
		before := pullsOfKept()
		record(t, "DB registry down during a swap", "old DB serves; error logged; DB taken after", &got, func() int { return pullsOfKept() - before })
		rt.set(dbRepo, func(w http.ResponseWriter, r *http.Request) bool {
			if strings.Contains(r.URL.Path, "/blobs/") {
				return hangUp(w, r)
			}
			return false
		})
		logged := strings.Count(ctrlProc.logged(), "Checking for a new vulnerability DB failed")
		next := reg.PublishDB(t, dbRepo, "2", dbSpec(t, "- {id: CVE-2026-2100, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r21, severity: LOW}\n"))
		g.Eventually(func() int {
			return strings.Count(ctrlProc.logged(), "Checking for a new vulnerability DB failed")
		}).WithTimeout(timeout).Should(BeNumerically(">", logged))
		g.Expect(allOn(dbOf(g, namespaces()...), currentDB)).To(BeTrue())
		got = "old DB serves; error logged"
		rt.set(dbRepo, nil)
		g.Eventually(func(g Gomega) { g.Expect(allOn(dbOf(g, namespaces()...), next.String())).To(BeTrue()) }).WithTimeout(timeout).Should(Succeed())
		currentDB = next.String()
		got += "; DB taken after"
		entries, _ := filepath.Glob(filepath.Join(cache, "db", ".download-*"))
		g.Expect(entries).To(BeEmpty())
	})

	t.Run("kube-apiserver stopped and restarted mid-reconcile", func(t *testing.T) {
		g := NewWithT(t)
		const ns, repo = "fault-apiserver", "faults/apiserver"
		got := ""
		record(t, "kube-apiserver stopped and restarted mid-analysis", "report Ready after the restart", &got, func() int { return rt.pulls(repo) })
		img := testsuite.Image(repo)
		_, _, digest := testsuite.Push(t, reg, repo, img)
		layer, _ := lastLayer(t, img)
		inAnalysis, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		rt.set(repo, func(_ http.ResponseWriter, r *http.Request) bool {
			if strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
				once.Do(func() { close(inAnalysis) })
				<-release
			}
			return false
		})
		createNamespace(g, ns)
		createPod(g, ns, "app", reg.Host()+"/"+repo+"@"+digest)
		g.Eventually(inAnalysis).WithTimeout(timeout).Should(BeClosed())
		g.Expect(env.StopAPIServer()).To(Succeed())
		close(release)
		time.Sleep(3 * time.Second) // the analysis ends and its status write fails meanwhile
		g.Expect(env.StartAPIServer()).To(Succeed())
		rt.set(repo, nil)
		waitReady(g, ns, digest)
		g.Expect(ctrlProc.exited()).To(BeFalse())
		got = "report Ready after the restart"
		keep = append(keep, kept{ns, digest, repo})
	})

	// The rest kill the controller: the first one stops for good.
	ctrlProc.stop()

	t.Run("SIGKILL during an analysis, twice", func(t *testing.T) {
		g := NewWithT(t)
		const ns = "fault-crash"
		got := ""
		innocentRepos := []string{"faults/innocent-1", "faults/innocent-2"}
		record(t, "SIGKILL during an analysis, twice", "AnalysisCrashed at the third start; others Ready", &got, func() int {
			return rt.pulls("faults/crash") + rt.pulls(innocentRepos[0]) + rt.pulls(innocentRepos[1])
		})
		before := pullsOfKept()
		crashImg := testsuite.Image("crash")
		_, _, crashDigest := testsuite.Push(t, reg, "faults/crash", crashImg)
		crashLayer, _ := lastLayer(t, crashImg)
		var innocent []string
		for _, repo := range innocentRepos {
			_, _, d := testsuite.Push(t, reg, repo, testsuite.Image(repo))
			innocent = append(innocent, d)
		}
		var mu sync.Mutex
		var current *process
		kills := 0
		rt.setOnBlob(func(repo, digest string) {
			if repo != "faults/crash" || digest != crashLayer.String() {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if current != nil && !current.exited() {
				kills++
				current.kill()
				<-current.done
			}
		})
		t.Cleanup(func() { rt.setOnBlob(nil) })
		createNamespace(g, ns)
		createPod(g, ns, "crash", reg.Host()+"/faults/crash@"+crashDigest)
		for i, d := range innocent {
			createPod(g, ns, fmt.Sprintf("innocent-%d", i), reg.Host()+"/"+innocentRepos[i]+"@"+d)
		}
		for start := 1; start <= 2; start++ {
			mu.Lock()
			current = startController(t, reg, cache, "--rescan-interval=1h")
			p := current
			mu.Unlock()
			g.Eventually(p.done).WithTimeout(timeout).Should(BeClosed(), "start %d was not killed", start)
		}
		mu.Lock()
		current = startController(t, reg, cache, "--rescan-interval=1h")
		mu.Unlock()
		r := waitScanFailed(g, ns, crashDigest, securityv1alpha1.ReasonAnalysisCrashed)
		g.Expect(meta.IsStatusConditionTrue(r.Status.Conditions, securityv1alpha1.ConditionStalled)).To(BeTrue())
		g.Expect(meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionScanned).Message).To(ContainSubstring("stopped the controller 2 times"))
		_, got = scanned(r)
		for _, d := range innocent {
			waitReady(g, ns, d)
		}
		got += " at the third start; others Ready"
		mu.Lock()
		g.Expect(kills).To(Equal(2))
		mu.Unlock()
		// The reports kept before were matched again from their inventories.
		for _, k := range keep {
			waitReady(g, k.ns, k.digest)
		}
		g.Expect(pullsOfKept()).To(Equal(before))
		for i, repo := range innocentRepos {
			keep = append(keep, kept{ns, innocent[i], repo})
		}
		mu.Lock()
		current.stop()
		mu.Unlock()
	})

	t.Run("SIGKILL during a DB swap", func(t *testing.T) {
		g := NewWithT(t)
		got := ""
		before := pullsOfKept()
		record(t, "SIGKILL during a DB download, restart on the same cache", "leftovers removed; new DB taken; no image pull", &got, func() int { return pullsOfKept() - before })
		p := startController(t, reg, cache, "--rescan-interval=1h")
		for _, k := range keep {
			waitReady(g, k.ns, k.digest)
		}
		// The next DB's blob kills the process mid-download, once its folder exists.
		var once sync.Once
		rt.set(dbRepo, func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != http.MethodGet {
				return false
			}
			killed := false
			once.Do(func() {
				p.kill()
				<-p.done
				killed = true
			})
			if killed {
				return hangUp(w, r)
			}
			return false
		})
		next := reg.PublishDB(t, dbRepo, "2", dbSpec(t, "- {id: CVE-2026-2200, ecosystem: alpine 3.22, package: busybox, fixedVersion: 1.37.0-r21, severity: LOW}\n"))
		g.Eventually(p.done).WithTimeout(timeout).Should(BeClosed())
		leftovers, _ := filepath.Glob(filepath.Join(cache, "db", ".download-*"))
		g.Expect(leftovers).NotTo(BeEmpty(), "the kill left no download folder: nothing to clean")
		rt.set(dbRepo, nil)
		restarted := startController(t, reg, cache, "--rescan-interval=1h")
		g.Eventually(func(g Gomega) { g.Expect(allOn(dbOf(g, namespaces()...), next.String())).To(BeTrue()) }).WithTimeout(timeout).Should(Succeed())
		entries, _ := filepath.Glob(filepath.Join(cache, "db", ".download-*"))
		g.Expect(entries).To(BeEmpty())
		g.Expect(filepath.Join(cache, "db", "current.old")).NotTo(BeADirectory())
		for _, k := range keep {
			waitReady(g, k.ns, k.digest)
		}
		g.Expect(pullsOfKept()).To(Equal(before))
		got = "leftovers removed; new DB taken; no image pull"
		restarted.stop()
	})

	t.Run("an image that exhausts its analysis worker's memory", func(t *testing.T) {
		g := NewWithT(t)
		const ns, repo = "fault-memory", "faults/cargo-bomb"
		got := ""
		before := pullsOfKept()
		record(t, "an image whose parsing takes 2 GiB (estimate off)", "UnsupportedImage naming --analysis-memory-bytes; controller runs on", &got, func() int { return rt.pulls(repo) })
		// A 48 MiB Cargo.lock of 786,432 packages, 50 KB compressed; the package estimate that would
		// refuse it first is turned off, so the worker's bound is what holds.
		entry := "[[package]]\nname = \"a\"\nversion = \"1.0.0\"\n"
		entry += strings.Repeat("#", 63-len(entry)) + "\n"
		base, err := testsuite.Image(repo).Layers()
		g.Expect(err).NotTo(HaveOccurred())
		img, err := testutil.ImageFromLayers(testutil.LinuxAMD64, append(base, testutil.CompressibleFileLayer("app/Cargo.lock", 48<<20, []byte(entry)))...)
		g.Expect(err).NotTo(HaveOccurred())
		_, _, digest := testsuite.Push(t, reg, repo, img)
		p := startController(t, reg, cache, "--rescan-interval=1h", "--max-packages=-1", "--analysis-memory-bytes=268435456")
		createNamespace(g, ns)
		createPod(g, ns, "app", reg.Host()+"/"+repo+"@"+digest)
		r := waitScanFailed(g, ns, digest, securityv1alpha1.ReasonUnsupportedImage)
		g.Expect(meta.FindStatusCondition(r.Status.Conditions, securityv1alpha1.ConditionScanned).Message).To(ContainSubstring("(--analysis-memory-bytes)"))
		_, got = scanned(r)
		g.Expect(p.exited()).To(BeFalse())
		for _, k := range keep {
			waitReady(g, k.ns, k.digest)
		}
		g.Expect(pullsOfKept()).To(Equal(before))
		got += " naming --analysis-memory-bytes; controller runs on"
		p.stop()
	})

	t.Run("two replicas: the follower serves admission, then takes over", func(t *testing.T) {
		g := NewWithT(t)
		ctx := context.Background()
		const ns = "fault-replicas"
		got := ""
		before := pullsOfKept()
		record(t, "two replicas, leader SIGKILLed", "follower denies at admission; takes over", &got, func() int { return pullsOfKept() - before })
		// A namespace whose policy enforces no critical finding, and a pod of a kept image with one.
		createNamespace(g, ns)
		g.Expect(env.Client.Create(ctx, &securityv1alpha1.ImagePolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "no-critical", Namespace: ns},
			Spec: securityv1alpha1.ImagePolicySpec{Enforcement: securityv1alpha1.EnforcementEnforce,
				Rules: securityv1alpha1.PolicyRules{Vulnerabilities: &securityv1alpha1.VulnerabilityRule{MaxCritical: ptr.To[int32](0)}}},
		})).To(Succeed())
		image := reg.Host() + "/" + keep[0].repo + "@" + keep[0].digest
		createPod(g, ns, "app", image)

		replica := func() (*process, int) {
			port := freePort(t)
			return startController(t, reg, t.TempDir(), "--rescan-interval=1h", "--leader-elect", "--leader-election-namespace=default",
				"--leader-election-id=faults-replicas", fmt.Sprintf("--webhook-port=%d", port),
				"--webhook-cert-dir="+t.TempDir(), "--webhook-cert-secret=faults-webhook-tls", "--webhook-cert-namespace=default",
				"--webhook-cert-hosts=127.0.0.1"), port
		}
		a, portA := replica()
		b, portB := replica()
		leaderOf := func() (*process, *process, int) {
			if strings.Contains(a.logged(), "Successfully acquired lease") {
				return a, b, portB
			}
			if strings.Contains(b.logged(), "Successfully acquired lease") {
				return b, a, portA
			}
			return nil, nil, 0
		}
		g.Eventually(func() *process { l, _, _ := leaderOf(); return l }).WithTimeout(timeout).ShouldNot(BeNil())
		leader, follower, followerPort := leaderOf()
		waitReady(g, ns, keep[0].digest)

		// The follower judges from its own caches: denied.
		deny := func(port int) func(g Gomega) {
			return func(g Gomega) {
				resp, err := admit(port, ns, image)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(resp.Allowed).To(BeFalse(), "%+v", resp.Result)
				g.Expect(resp.Result.Message).To(ContainSubstring("critical"))
			}
		}
		g.Eventually(deny(followerPort)).WithTimeout(timeout).Should(Succeed())
		g.Expect(follower.logged()).NotTo(ContainSubstring("Successfully acquired lease"))
		got = "follower denies at admission"

		// The leader dies; the follower takes the lease and reconciles: a new image gets its report.
		leader.kill()
		const repo = "faults/after-failover"
		_, _, digest := testsuite.Push(t, reg, repo, testsuite.Image(repo))
		createPod(g, ns, "new", reg.Host()+"/"+repo+"@"+digest)
		g.Eventually(func() string { return follower.logged() }).WithTimeout(timeout).Should(ContainSubstring("Successfully acquired lease"))
		waitReady(g, ns, digest)
		g.Eventually(deny(followerPort)).WithTimeout(timeout).Should(Succeed())
		got += "; takes over"
		follower.stop()
	})

}
