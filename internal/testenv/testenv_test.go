package testenv

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestControllerManagerMakesPods: with the controller manager, a Deployment gets its ReplicaSet
// and pods, made by the controllers' own service accounts.
func TestControllerManagerMakesPods(t *testing.T) {
	env, err := Start(Options{ControllerManager: true, NoCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	ctx := context.Background()
	labels := map[string]string{"app": "web"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](2), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/web:1"}}},
			}},
	}
	if err := env.Client.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		pods := &corev1.PodList{}
		if err := env.Client.List(ctx, pods, client.InNamespace("default")); err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 2 {
			if ref := metav1.GetControllerOf(&pods.Items[0]); ref == nil || ref.Kind != "ReplicaSet" {
				t.Fatalf("the pod's controller is %v, not a ReplicaSet", ref)
			}
			return
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, env.ControllerManagerLog())
			t.Fatalf("%d pods after a minute, want 2", len(pods.Items))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
