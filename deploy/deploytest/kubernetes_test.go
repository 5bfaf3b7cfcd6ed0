package deploytest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
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

func one[T any](t testing.TB, kind string, objs []T) T {
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
func checkManifests(t testing.TB, r *rendered) {
	d := one(t, "Deployment", r.deployments)
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

	var httpPort, adminPort int32
	for _, p := range c.Ports {
		switch p.Name {
		case "http":
			httpPort = p.ContainerPort
		case "admin":
			adminPort = p.ContainerPort
		}
	}
	if httpPort == 0 || adminPort == 0 || httpPort == adminPort {
		t.Fatalf("container ports %+v: want two, named http (traffic) and admin (metrics and probes)", c.Ports)
	}
	// The kubelet probes the admin listener, which serves /healthz and
	// /readyz; the traffic port has them only with --public-health.
	probe := func(name string, p *corev1.Probe, wantPath string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", name, wantPath)
			return
		}
		if p.HTTPGet.Path != wantPath || p.HTTPGet.Port != intstr.FromString("admin") {
			t.Errorf("%s probe: GET %s on port %s, want %s on admin", name, p.HTTPGet.Path, p.HTTPGet.Port.String(), wantPath)
		}
	}
	probe("readiness", c.ReadinessProbe, "/readyz")
	probe("liveness", c.LivenessProbe, "/healthz")

	// Prometheus scrapes /metrics on the admin port.
	ann := d.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(int(adminPort)) || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations scrape=%q port=%q path=%q: want true, %d (the admin port) and /metrics",
			ann["prometheus.io/scrape"], ann["prometheus.io/port"], ann["prometheus.io/path"], adminPort)
	}

	// --config names a file of the ConfigMap, mounted read-only.
	args := c.Args
	configPath, ok := flagValue(args, "--config")
	if len(args) == 0 || args[0] != "serve" || !ok {
		t.Fatalf("container args %q: want serve --config FILE", args)
	}
	if v, _ := flagValue(args, "--listen"); v != fmt.Sprintf(":%d", httpPort) {
		t.Errorf("container args %q: want --listen :%d (the http port)", args, httpPort)
	}
	// The admin listener must listen on the pod IP: its default,
	// 127.0.0.1:9090, is out of reach of the kubelet and Prometheus.
	var fileConfig map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data[path.Base(configPath)]), &fileConfig); err != nil {
		t.Errorf("%s: %v", configPath, err)
	}
	admin, from := effectiveSetting(args, c.Env, fileConfig, "admin-listen", defaultAdminListen)
	if host, port, err := net.SplitHostPort(admin); err != nil || (host != "" && host != "0.0.0.0" && host != "::") || port != strconv.Itoa(int(adminPort)) {
		t.Errorf("the admin listener is %q (from %s): want :%d, all addresses of the pod on the admin port", admin, from, adminPort)
	}
	// pprof on the pod IP would be open to every pod of the cluster.
	if pprof, from := effectiveSetting(args, c.Env, fileConfig, "pprof", "false"); pprof != "false" {
		t.Errorf("pprof is %q (from %s): not in the production manifests", pprof, from)
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

	// One Service carries the traffic, to the http port only. The admin
	// port is on no Service but, at most, a headless one of its own.
	var traffic []*corev1.Service
	for _, s := range r.services {
		if !selects(s.Spec.Selector, podLabels) {
			t.Errorf("Service %s selects %v, the pods have %v", s.Name, s.Spec.Selector, podLabels)
		}
		var toHTTP, toAdmin bool
		for _, p := range s.Spec.Ports {
			switch target := containerPortOf(c, p); target {
			case httpPort:
				toHTTP = true
				if p.TargetPort != intstr.FromString("http") {
					t.Errorf("Service %s port %s targets %s, want the container's http port by name", s.Name, p.Name, p.TargetPort.String())
				}
			case adminPort:
				toAdmin = true
			default:
				t.Errorf("Service %s port %s targets %s, no port of the container", s.Name, p.Name, p.TargetPort.String())
			}
		}
		switch {
		case toHTTP && toAdmin:
			t.Errorf("Service %s exposes the admin port %d (metrics, health) next to the traffic", s.Name, adminPort)
		case toHTTP:
			traffic = append(traffic, s)
		case toAdmin && s.Spec.ClusterIP != corev1.ClusterIPNone:
			t.Errorf("Service %s exposes the admin port %d: want none, or a headless one (clusterIP: None)", s.Name, adminPort)
		}
	}
	svc := one(t, "Service with the http port", traffic)

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
	objNamespaces := []string{svc.Namespace, sa.Namespace, cm.Namespace, hpa.Namespace, pdb.Namespace}
	for _, s := range r.services {
		objNamespaces = append(objNamespaces, s.Namespace)
	}
	for _, o := range objNamespaces {
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
			addr, admin := freeAddr(t), freeAddr(t)
			args := setFlag(slices.Clone(c.Args), "--config", cfgPath)
			args = setFlag(args, "--listen", addr)
			// A flag beats the environment and the config file, so this
			// moves the admin listener wherever the manifests set it.
			args = setFlag(args, "--admin-listen", admin)
			// A flag beats the config file, so the KMS key URIs are not opened.
			args = append(args, "--key", key)
			env := cleanEnv()
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					env = append(env, e.Name+"="+e.Value)
				}
			}
			p := start(t, "kmsgate "+k, env, bin, args...)
			// The probes' endpoints, on the admin listener.
			p.waitHTTP(t, "http://"+admin+"/readyz", 200)
			p.waitHTTP(t, "http://"+admin+"/healthz", 200)
			if status, body := httpGet(t, "http://"+admin+"/metrics"); status != 200 || !strings.Contains(body, "\nkmsgate_keys_ready 1\n") {
				t.Errorf("admin GET /metrics: %d, want 200 with kmsgate_keys_ready 1:\n%.500s", status, body)
			}
			// The traffic port serves the key set but none of the admin
			// endpoints (these manifests do not set --public-health).
			if status, body := httpGet(t, "http://"+addr+"/.well-known/jwks.json"); status != 200 || !strings.Contains(body, `"keys"`) {
				t.Errorf("GET /.well-known/jwks.json on the traffic port: %d %.200s", status, body)
			}
			for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
				if status, body := httpGet(t, "http://"+addr+path); status != 404 {
					t.Errorf("GET %s on the traffic port: %d %.200s, want 404 (admin port only)", path, status, body)
				}
			}
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

// defaultAdminListen is the default of kmsgate serve --admin-listen.
const defaultAdminListen = "127.0.0.1:9090"

// flagValue returns the value of a flag in container args, given as
// "--name VALUE" or "--name=VALUE" (the last one wins, as in kmsgate).
func flagValue(args []string, name string) (string, bool) {
	var v string
	var ok bool
	for i, a := range args {
		switch {
		case a == name && i+1 < len(args):
			v, ok = args[i+1], true
		case strings.HasPrefix(a, name+"="):
			v, ok = strings.TrimPrefix(a, name+"="), true
		}
	}
	return v, ok
}

// setFlag sets a flag's value in container args: in place where the args
// have it, else appended.
func setFlag(args []string, name, value string) []string {
	var found bool
	for i, a := range args {
		switch {
		case a == name && i+1 < len(args):
			args[i+1], found = value, true
		case strings.HasPrefix(a, name+"="):
			args[i], found = name+"="+value, true
		}
	}
	if !found {
		args = append(args, name, value)
	}
	return args
}

// effectiveSetting resolves a setting of kmsgate serve the way kmsgate
// does: the flag (a bare boolean flag is "true"), else its environment
// variable KMSGATE_NAME, else the config file key, else the default. It
// also returns where the value came from.
func effectiveSetting(args []string, env []corev1.EnvVar, config map[string]any, name, def string) (string, string) {
	if v, ok := flagValue(args, "--"+name); ok {
		return v, "--" + name
	}
	if slices.Contains(args, "--"+name) {
		return "true", "--" + name
	}
	envName := "KMSGATE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	for _, e := range env {
		if e.Name == envName {
			if e.ValueFrom != nil {
				return "(valueFrom)", envName
			}
			return e.Value, envName
		}
	}
	if v, ok := config[name]; ok {
		return fmt.Sprint(v), "config key " + name
	}
	return def, "the default"
}

// containerPortOf returns the container port a Service port sends to: its
// targetPort by name or number, or its port when targetPort is unset.
func containerPortOf(c corev1.Container, p corev1.ServicePort) int32 {
	switch {
	case p.TargetPort.Type == intstr.String:
		for _, cp := range c.Ports {
			if cp.Name == p.TargetPort.StrVal {
				return cp.ContainerPort
			}
		}
		return 0
	case p.TargetPort.IntVal != 0:
		return p.TargetPort.IntVal
	default:
		return p.Port
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

// recorder is a testing.TB that collects failures instead of reporting
// them, so that a test can check that checkManifests catches a mistake.
type recorder struct {
	testing.TB
	failures []string
}

func (r *recorder) Helper()        {}
func (r *recorder) Error(a ...any) { r.failures = append(r.failures, fmt.Sprint(a...)) }
func (r *recorder) Errorf(format string, a ...any) {
	r.failures = append(r.failures, fmt.Sprintf(format, a...))
}
func (r *recorder) Fatal(a ...any)                 { r.Error(a...); runtime.Goexit() }
func (r *recorder) Fatalf(format string, a ...any) { r.Errorf(format, a...); runtime.Goexit() }

// TestManifestChecksCatchAdminPortMistakes breaks the base rendering in the
// ways the admin listener is easy to get wrong and checks that
// checkManifests reports each, and accepts the equivalent good variants.
func TestManifestChecksCatchAdminPortMistakes(t *testing.T) {
	manifests := kustomize(t, filepath.Join(root, "deploy", "kubernetes", "base"))
	container := func(r *rendered) *corev1.Container { return &r.deployments[0].Spec.Template.Spec.Containers[0] }
	withoutFlag := func(args []string, name string) []string {
		i := slices.Index(args, name)
		return slices.Delete(args, i, i+2)
	}
	for _, tc := range []struct {
		name   string
		mutate func(r *rendered)
		want   string // a part of the failure; "" for none
	}{
		{"unchanged", func(*rendered) {}, ""},
		{"readiness probe on http", func(r *rendered) {
			container(r).ReadinessProbe.HTTPGet.Port = intstr.FromString("http")
		}, "readiness probe: GET /readyz on port http"},
		{"liveness probe on 9090 by number", func(r *rendered) {
			container(r).LivenessProbe.HTTPGet.Port = intstr.FromInt32(9090)
		}, "liveness probe: GET /healthz on port 9090"},
		{"scrape annotation on 8080", func(r *rendered) {
			r.deployments[0].Spec.Template.Annotations["prometheus.io/port"] = "8080"
		}, `port="8080" path="/metrics": want true, 9090 (the admin port)`},
		{"no admin container port", func(r *rendered) {
			container(r).Ports = container(r).Ports[:1]
		}, "named http (traffic) and admin"},
		{"admin listener left at its loopback default", func(r *rendered) {
			container(r).Args = withoutFlag(container(r).Args, "--admin-listen")
		}, `the admin listener is "127.0.0.1:9090" (from the default)`},
		{"admin listener on loopback by flag", func(r *rendered) {
			container(r).Args = setFlag(container(r).Args, "--admin-listen", "127.0.0.1:9090")
		}, `"127.0.0.1:9090" (from --admin-listen)`},
		{"admin listener on another port", func(r *rendered) {
			container(r).Args = setFlag(container(r).Args, "--admin-listen", ":9091")
		}, `":9091" (from --admin-listen)`},
		{"admin listener from the environment", func(r *rendered) {
			c := container(r)
			c.Args = withoutFlag(c.Args, "--admin-listen")
			c.Env = append(c.Env, corev1.EnvVar{Name: "KMSGATE_ADMIN_LISTEN", Value: ":9090"})
		}, ""},
		{"admin listener from the config file", func(r *rendered) {
			c := container(r)
			c.Args = withoutFlag(c.Args, "--admin-listen")
			r.configMaps[0].Data["config.yaml"] += "admin-listen: \"0.0.0.0:9090\"\n"
		}, ""},
		{"pprof", func(r *rendered) {
			container(r).Args = append(container(r).Args, "--pprof")
		}, "pprof is"},
		{"admin port on the traffic Service", func(r *rendered) {
			s := r.services[0]
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "admin", Port: 9090, TargetPort: intstr.FromString("admin")})
		}, "exposes the admin port 9090 (metrics, health) next to the traffic"},
		{"admin port on the traffic Service by number", func(r *rendered) {
			s := r.services[0]
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "metrics", Port: 9090})
		}, "exposes the admin port 9090 (metrics, health) next to the traffic"},
		{"a ClusterIP metrics Service", func(r *rendered) {
			s := r.services[0].DeepCopy()
			s.Name = "kmsgate-metrics"
			s.Spec.Ports = []corev1.ServicePort{{Name: "admin", Port: 9090, TargetPort: intstr.FromString("admin")}}
			r.services = append(r.services, s)
		}, "Service kmsgate-metrics exposes the admin port 9090: want none, or a headless one"},
		{"a headless metrics Service", func(r *rendered) {
			s := r.services[0].DeepCopy()
			s.Name = "kmsgate-metrics"
			s.Spec.ClusterIP = corev1.ClusterIPNone
			s.Spec.Ports = []corev1.ServicePort{{Name: "admin", Port: 9090, TargetPort: intstr.FromString("admin")}}
			r.services = append(r.services, s)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := decodeStrict(manifests)
			if err != nil {
				t.Fatal(err)
			}
			tc.mutate(r)
			rec := &recorder{TB: t}
			done := make(chan struct{})
			go func() { defer close(done); checkManifests(rec, r) }()
			<-done
			switch {
			case tc.want == "" && len(rec.failures) > 0:
				t.Errorf("checkManifests failed a good variant: %q", rec.failures)
			case tc.want != "" && !slices.ContainsFunc(rec.failures, func(f string) bool { return strings.Contains(f, tc.want) }):
				t.Errorf("checkManifests reported %q, want a failure containing %q", rec.failures, tc.want)
			}
		})
	}
}
