package deploytest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// rendered is the output of one kustomization, decoded.
type rendered struct {
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	serviceAccounts []*corev1.ServiceAccount
	configMaps      []*corev1.ConfigMap
	namespaces      []*corev1.Namespace
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	pdbs            []*policyv1.PodDisruptionBudget
}

// kustomize renders a kustomization with the kustomize library, the same
// code `kubectl kustomize` and `kustomize build` run, so that no tool has to
// be installed (TestKustomizeMatchesKubectl compares the two when kubectl is
// there).
func kustomize(t *testing.T, dir string) string {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	return string(out)
}

// kubectlKustomize renders a kustomization with kubectl's built-in kustomize.
func kubectlKustomize(t *testing.T, kubectl, dir string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectl, "kustomize", dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return string(out)
}

// decodeStrict decodes every document into its k8s.io/api type. Unknown or
// duplicate fields, and kinds or apiVersions without a type here, are errors.
func decodeStrict(manifests string) (*rendered, error) {
	r := &rendered{}
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(manifests, -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		var obj any
		switch meta.APIVersion + " " + meta.Kind {
		case "apps/v1 Deployment":
			o := &appsv1.Deployment{}
			r.deployments, obj = append(r.deployments, o), o
		case "v1 Service":
			o := &corev1.Service{}
			r.services, obj = append(r.services, o), o
		case "v1 ServiceAccount":
			o := &corev1.ServiceAccount{}
			r.serviceAccounts, obj = append(r.serviceAccounts, o), o
		case "v1 ConfigMap":
			o := &corev1.ConfigMap{}
			r.configMaps, obj = append(r.configMaps, o), o
		case "v1 Namespace":
			o := &corev1.Namespace{}
			r.namespaces, obj = append(r.namespaces, o), o
		case "autoscaling/v2 HorizontalPodAutoscaler":
			o := &autoscalingv2.HorizontalPodAutoscaler{}
			r.hpas, obj = append(r.hpas, o), o
		case "policy/v1 PodDisruptionBudget":
			o := &policyv1.PodDisruptionBudget{}
			r.pdbs, obj = append(r.pdbs, o), o
		default:
			return nil, fmt.Errorf("document %d: no k8s.io/api type for apiVersion %q kind %q", i, meta.APIVersion, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i, meta.Kind, err)
		}
	}
	return r, nil
}

func TestDecodeStrictRejectsUnknownFields(t *testing.T) {
	doc := "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replica: 2\n"
	if _, err := decodeStrict(doc); err == nil || !strings.Contains(err.Error(), `unknown field "replica"`) {
		t.Errorf("decodeStrict(misspelled field) = %v, want an unknown field error", err)
	}
	doc = "apiVersion: apps/v1beta1\nkind: Deployment\nmetadata:\n  name: x\n"
	if _, err := decodeStrict(doc); err == nil || !strings.Contains(err.Error(), "no k8s.io/api type") {
		t.Errorf("decodeStrict(old apiVersion) = %v", err)
	}
	doc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports:\n  - port: \"eighty\"\n"
	if _, err := decodeStrict(doc); err == nil {
		t.Error("decodeStrict(string port) accepted")
	}
}

// The kustomizations under deploy/kubernetes: the base and one overlay per
// backend.
var kustomizations = []string{"base", "overlays/gcp", "overlays/aws", "overlays/vault"}

func TestKubernetesManifests(t *testing.T) {
	for _, k := range kustomizations {
		t.Run(k, func(t *testing.T) {
			r, err := decodeStrict(kustomize(t, filepath.Join(root, "deploy", "kubernetes", k)))
			if err != nil {
				t.Fatal(err)
			}
			checkManifests(t, r)
			switch k {
			case "overlays/gcp":
				checkOverlay(t, r, "iam.gke.io/gcp-service-account", `^[a-z][-a-z0-9]*@[-A-Za-z0-9]+\.iam\.gserviceaccount\.com$`, "gcpkms://")
			case "overlays/aws":
				checkOverlay(t, r, "eks.amazonaws.com/role-arn", `^arn:aws[-a-z]*:iam::[A-Z0-9]+:role/.+$`, "awskms://")
			case "overlays/vault":
				checkOverlay(t, r, "", "", "hashivault://")
				checkVaultOverlay(t, r)
			}
		})
	}
}

func one[T any](t *testing.T, kind string, objs []T) T {
	t.Helper()
	if len(objs) != 1 {
		t.Fatalf("want exactly one %s, got %d", kind, len(objs))
	}
	return objs[0]
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// checkManifests asserts what every rendering must have.
func checkManifests(t *testing.T, r *rendered) {
	d := one(t, "Deployment", r.deployments)
	svc := one(t, "Service", r.services)
	sa := one(t, "ServiceAccount", r.serviceAccounts)
	cm := one(t, "ConfigMap", r.configMaps)
	hpa := one(t, "HorizontalPodAutoscaler", r.hpas)
	pdb := one(t, "PodDisruptionBudget", r.pdbs)
	pod := d.Spec.Template.Spec
	podLabels := d.Spec.Template.Labels

	if d.Spec.Selector == nil || !selects(d.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("the Deployment's selector %v does not select its pods %v", d.Spec.Selector, podLabels)
	}
	if pod.ServiceAccountName != sa.Name {
		t.Errorf("pods run as ServiceAccount %q, the manifests define %q", pod.ServiceAccountName, sa.Name)
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Error("pods share a host namespace")
	}
	if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds <= 30 {
		t.Errorf("terminationGracePeriodSeconds %v: want more than kmsgate's --shutdown-grace of 30 s", pod.TerminationGracePeriodSeconds)
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("the pod security context must set runAsNonRoot and a non-zero runAsUser: %+v", psc)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("the pod must use the RuntimeDefault seccomp profile")
	}

	c := one(t, "container", pod.Containers)
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("the container has no security context")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("the root filesystem must be read-only")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("allowPrivilegeEscalation must be false")
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("the container is privileged")
	case sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0:
		t.Errorf("capabilities %+v: want drop ALL and add none", sc.Capabilities)
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Error("the container must set runAsNonRoot")
	}
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[res]; !ok || q.IsZero() {
			t.Errorf("no %s request", res)
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.Cmp(c.Resources.Requests[corev1.ResourceMemory]) < 0 {
		t.Errorf("the memory limit %v must be set and at least the request", q)
	}

	var httpPort int32
	for _, p := range c.Ports {
		if p.Name == "http" {
			httpPort = p.ContainerPort
		}
	}
	if httpPort == 0 {
		t.Fatal("the container has no port named http")
	}
	probe := func(name string, p *corev1.Probe, wantPath string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", name, wantPath)
			return
		}
		if p.HTTPGet.Path != wantPath || p.HTTPGet.Port != intstr.FromString("http") {
			t.Errorf("%s probe: GET %s on port %s, want %s on http", name, p.HTTPGet.Path, p.HTTPGet.Port.String(), wantPath)
		}
	}
	probe("readiness", c.ReadinessProbe, "/readyz")
	probe("liveness", c.LivenessProbe, "/healthz")

	// --config names a file of the ConfigMap, mounted read-only.
	args := c.Args
	i := slices.Index(args, "--config")
	if len(args) == 0 || args[0] != "serve" || i < 0 || i+1 >= len(args) {
		t.Fatalf("container args %q: want serve --config FILE", args)
	}
	configPath := args[i+1]
	if j := slices.Index(args, "--listen"); j < 0 || j+1 >= len(args) || args[j+1] != fmt.Sprintf(":%d", httpPort) {
		t.Errorf("container args %q: want --listen :%d (the http port)", args, httpPort)
	}
	var mounted bool
	for _, m := range c.VolumeMounts {
		var vol *corev1.Volume
		for k := range pod.Volumes {
			if pod.Volumes[k].Name == m.Name {
				vol = &pod.Volumes[k]
			}
		}
		if vol == nil {
			t.Errorf("volumeMount %s has no volume", m.Name)
			continue
		}
		if vol.HostPath != nil {
			t.Errorf("volume %s is a hostPath", vol.Name)
		}
		if vol.EmptyDir == nil && !m.ReadOnly {
			t.Errorf("volumeMount %s at %s is writable", m.Name, m.MountPath)
		}
		if vol.ConfigMap != nil && m.MountPath == path.Dir(configPath) {
			if vol.ConfigMap.Name != cm.Name {
				t.Errorf("the config volume names ConfigMap %q, the manifests define %q", vol.ConfigMap.Name, cm.Name)
			}
			if _, ok := cm.Data[path.Base(configPath)]; !ok {
				t.Errorf("ConfigMap %s has no %s", cm.Name, path.Base(configPath))
			}
			mounted = mounted || m.ReadOnly
		}
	}
	if !mounted {
		t.Errorf("--config %s is not a file of a read-only mounted ConfigMap", configPath)
	}

	if !selects(svc.Spec.Selector, podLabels) {
		t.Errorf("the Service selects %v, the pods have %v", svc.Spec.Selector, podLabels)
	}
	for _, p := range svc.Spec.Ports {
		if p.TargetPort != intstr.FromString("http") {
			t.Errorf("Service port %s targets %s, want the container's http port", p.Name, p.TargetPort.String())
		}
	}

	ref := hpa.Spec.ScaleTargetRef
	if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != d.Name {
		t.Errorf("the HPA scales %+v, not Deployment %s", ref, d.Name)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas || len(hpa.Spec.Metrics) == 0 {
		t.Errorf("HPA replicas %v..%d with %d metrics: want at least 2 replicas and a metric", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas, len(hpa.Spec.Metrics))
	}
	if d.Spec.Replicas != nil {
		t.Error("the Deployment sets replicas, which fights the HPA")
	}

	if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("the PodDisruptionBudget does not select the pods")
	}
	if pdb.Spec.MinAvailable == nil && pdb.Spec.MaxUnavailable == nil {
		t.Error("the PodDisruptionBudget sets neither minAvailable nor maxUnavailable")
	}

	// Everything in one namespace.
	ns := d.Namespace
	for _, o := range []string{svc.Namespace, sa.Namespace, cm.Namespace, hpa.Namespace, pdb.Namespace} {
		if o != ns {
			t.Errorf("objects are spread over namespaces %q and %q", ns, o)
		}
	}
	for _, n := range r.namespaces {
		if n.Name != ns {
			t.Errorf("Namespace %s is not the objects' namespace %q", n.Name, ns)
		}
		if n.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
			t.Errorf("Namespace %s does not enforce the restricted Pod Security Standard", n.Name)
		}
	}
}

// checkOverlay asserts an overlay's ServiceAccount annotation (the hook for
// Workload Identity or IRSA) and that its config names a key of its backend.
func checkOverlay(t *testing.T, r *rendered, annotation, pattern, scheme string) {
	sa := one(t, "ServiceAccount", r.serviceAccounts)
	if annotation != "" {
		v, ok := sa.Annotations[annotation]
		if !ok || !regexp.MustCompile(pattern).MatchString(v) {
			t.Errorf("ServiceAccount annotation %s = %q, want a value matching %s", annotation, v, pattern)
		}
	}
	if len(r.namespaces) != 1 || r.deployments[0].Namespace == "" {
		t.Error("an overlay must put everything into its own namespace")
	}
	cm := one(t, "ConfigMap", r.configMaps)
	var cfg struct {
		Key []string `json:"key"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	if len(cfg.Key) == 0 || !strings.HasPrefix(cfg.Key[0], scheme) {
		t.Errorf("config.yaml key %q: want a %s URI first", cfg.Key, scheme)
	}
}

// TestKubernetesConfigStartsTheGateway runs the real binary with each
// rendering's container args and config file (only the key is swapped for a
// local PEM key and the port for a free one): kmsgate must accept both and
// become ready.
func TestKubernetesConfigStartsTheGateway(t *testing.T) {
	bin, _ := binaries(t)
	key := genkey(t, bin)
	for _, k := range kustomizations {
		t.Run(k, func(t *testing.T) {
			r, err := decodeStrict(kustomize(t, filepath.Join(root, "deploy", "kubernetes", k)))
			if err != nil {
				t.Fatal(err)
			}
			c := one(t, "container", one(t, "Deployment", r.deployments).Spec.Template.Spec.Containers)
			cm := one(t, "ConfigMap", r.configMaps)
			dir := t.TempDir()
			cfgPath := filepath.Join(dir, "config.yaml")
			if err := os.WriteFile(cfgPath, []byte(cm.Data["config.yaml"]), 0o644); err != nil {
				t.Fatal(err)
			}
			addr := freeAddr(t)
			args := slices.Clone(c.Args)
			for i := range args {
				switch {
				case i > 0 && args[i-1] == "--config":
					args[i] = cfgPath
				case i > 0 && args[i-1] == "--listen":
					args[i] = addr
				}
			}
			// A flag beats the config file, so the KMS key URIs are not opened.
			args = append(args, "--key", key)
			env := cleanEnv()
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					env = append(env, e.Name+"="+e.Value)
				}
			}
			p := start(t, "kmsgate "+k, env, bin, args...)
			p.waitHTTP(t, "http://"+addr+"/readyz", 200)
			p.waitHTTP(t, "http://"+addr+"/healthz", 200)
		})
	}
}

// checkVaultOverlay asserts how the Vault overlay logs in: Kubernetes auth
// with a projected token that only Vault accepts, at the path the backend
// reads (see backends/vault: KMSGATE_VAULT_AUTH, KMSGATE_VAULT_ROLE,
// KMSGATE_VAULT_K8S_TOKEN_PATH).
func checkVaultOverlay(t *testing.T, r *rendered) {
	d := one(t, "Deployment", r.deployments)
	pod := d.Spec.Template.Spec
	c := one(t, "container", pod.Containers)
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["KMSGATE_VAULT_AUTH"] != "kubernetes" || env["KMSGATE_VAULT_ROLE"] == "" {
		t.Errorf("env %v: want KMSGATE_VAULT_AUTH=kubernetes and a KMSGATE_VAULT_ROLE", env)
	}
	if !strings.HasPrefix(env["VAULT_ADDR"], "https://") {
		t.Errorf("VAULT_ADDR %q: want https", env["VAULT_ADDR"])
	}
	tokenPath := env["KMSGATE_VAULT_K8S_TOKEN_PATH"]
	var found bool
	for _, m := range c.VolumeMounts {
		if !strings.HasPrefix(tokenPath, m.MountPath+"/") {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != m.Name || v.Projected == nil {
				continue
			}
			for _, s := range v.Projected.Sources {
				if st := s.ServiceAccountToken; st != nil && st.Audience == "vault" && path.Join(m.MountPath, st.Path) == tokenPath &&
					st.ExpirationSeconds != nil && *st.ExpirationSeconds <= 3600 {
					found = true
				}
			}
		}
	}
	if !found {
		t.Errorf("KMSGATE_VAULT_K8S_TOKEN_PATH %q is not a projected service account token of audience vault (lifetime at most 1h)", tokenPath)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the default API token must not be mounted")
	}
}

// objectsByName decodes rendered manifests into generic objects keyed by
// kind, namespace and name, so that two renderings compare regardless of
// document order and formatting.
func objectsByName(t *testing.T, manifests string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(manifests, -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var o map[string]any
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatal(err)
		}
		meta, _ := o["metadata"].(map[string]any)
		out[fmt.Sprintf("%v/%v/%v", o["kind"], meta["namespace"], meta["name"])] = o
	}
	return out
}

// TestKustomizeMatchesKubectl checks that what the tests render is what
// `kubectl kustomize` renders for users. kubectl is not installable on every
// build machine; without it, the library rendering above is what is checked.
func TestKustomizeMatchesKubectl(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed; the manifests were rendered with the kustomize library only")
	}
	for _, k := range kustomizations {
		dir := filepath.Join(root, "deploy", "kubernetes", k)
		lib, cli := objectsByName(t, kustomize(t, dir)), objectsByName(t, kubectlKustomize(t, kubectl, dir))
		if !reflect.DeepEqual(lib, cli) {
			t.Errorf("%s: the kustomize library and kubectl kustomize render differently:\nlibrary: %v\nkubectl: %v", k, lib, cli)
		}
	}
}
