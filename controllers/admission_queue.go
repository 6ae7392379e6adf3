package controllers

import (
	"context"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	securityv1alpha1 "github.com/imageguard/imageguard/api/v1alpha1"
	"github.com/imageguard/imageguard/internal/policy"
)

// AdmissionScans starts the scans of images admission saw unscanned, before any pod runs them:
// it creates their reports, which the report controller scans. Requests are queued in memory and
// written by one goroutine, off the admission request path; when the queue is full the image is
// left to the pod controller, which creates its report once a pod runs it. Reports nobody runs are
// collected after --report-retention like any unused report.
type AdmissionScans struct {
	Client client.Client
	// APIReader reads a report the cache does not show yet.
	APIReader client.Reader
	Log       logr.Logger
	// ExcludedNamespaces (and namespaces labelled ExcludeLabel) get no report, as for the pod
	// controller.
	ExcludedNamespaces []string

	queue chan queuedScan
}

type queuedScan struct {
	namespace string
	image     policy.Image
}

// NewAdmissionScans returns a queue holding up to size images.
func NewAdmissionScans(c client.Client, live client.Reader, log logr.Logger, excluded []string, size int) *AdmissionScans {
	return &AdmissionScans{Client: c, APIReader: live, Log: log, ExcludedNamespaces: excluded, queue: make(chan queuedScan, size)}
}

// QueueScans queues the images whose digest is known; it never blocks.
func (a *AdmissionScans) QueueScans(namespace string, images []policy.Image) {
	for _, img := range images {
		if img.Digest == "" {
			continue // the pod controller learns the digest from the kubelet
		}
		select {
		case a.queue <- queuedScan{namespace: namespace, image: img}:
		default:
			a.Log.V(1).Info("Admission scan queue full; the pod controller will create the report", "image", img.Reference())
		}
	}
}

// NeedLeaderElection is false: every replica answers admission requests and queues their scans.
func (a *AdmissionScans) NeedLeaderElection() bool { return false }

// Start writes queued reports until ctx ends.
func (a *AdmissionScans) Start(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case q := <-a.queue:
			if err := a.create(ctx, q); err != nil {
				a.Log.Error(err, "Cannot create the report of an image seen at admission", "namespace", q.namespace, "image", q.image.Reference())
			}
		}
	}
}

func (a *AdmissionScans) create(ctx context.Context, q queuedScan) error {
	ns := &corev1.Namespace{}
	if err := a.Client.Get(ctx, client.ObjectKey{Name: q.namespace}, ns); err != nil {
		return client.IgnoreNotFound(err)
	}
	if excludedNamespace(ns, a.ExcludedNamespaces) || !ns.DeletionTimestamp.IsZero() {
		return nil
	}
	spec := securityv1alpha1.ImageScanReportSpec{Image: q.image.Repository, Digest: q.image.Digest, Platform: q.image.Platform}
	if q.image.Tag != "" {
		spec.Tags = []string{q.image.Tag}
	}
	_, _, err := reportFor(ctx, a.Client, a.APIReader, q.namespace, spec)
	return err
}
