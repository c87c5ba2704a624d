package deploy_test

import (
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// k8sObjects are the objects of a manifest file, decoded strictly (an
// unknown or misspelt field is an error) into the Kubernetes API types.
type k8sObjects struct {
	serviceAccounts map[string]*corev1.ServiceAccount
	configMaps      map[string]*corev1.ConfigMap
	services        map[string]*corev1.Service
	deployments     map[string]*appsv1.Deployment
	pdbs            map[string]*policyv1.PodDisruptionBudget
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

func decodeManifests(t *testing.T, files ...string) k8sObjects {
	t.Helper()
	objs := k8sObjects{
		serviceAccounts: map[string]*corev1.ServiceAccount{},
		configMaps:      map[string]*corev1.ConfigMap{},
		services:        map[string]*corev1.Service{},
		deployments:     map[string]*appsv1.Deployment{},
		pdbs:            map[string]*policyv1.PodDisruptionBudget{},
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSeparator.Split(string(raw), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			var obj interface{ GetName() string }
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 ServiceAccount":
				o := &corev1.ServiceAccount{}
				decodeStrict(t, f, i, doc, o)
				objs.serviceAccounts[o.Name], obj = o, o
			case "v1 ConfigMap":
				o := &corev1.ConfigMap{}
				decodeStrict(t, f, i, doc, o)
				objs.configMaps[o.Name], obj = o, o
			case "v1 Service":
				o := &corev1.Service{}
				decodeStrict(t, f, i, doc, o)
				objs.services[o.Name], obj = o, o
			case "apps/v1 Deployment":
				o := &appsv1.Deployment{}
				decodeStrict(t, f, i, doc, o)
				objs.deployments[o.Name], obj = o, o
			case "policy/v1 PodDisruptionBudget":
				o := &policyv1.PodDisruptionBudget{}
				decodeStrict(t, f, i, doc, o)
				objs.pdbs[o.Name], obj = o, o
			default:
				t.Fatalf("%s document %d: %s %s is not one of the kinds the test decodes", f, i, tm.APIVersion, tm.Kind)
			}
			if obj.GetName() == "" {
				t.Errorf("%s document %d: %s without a name", f, i, tm.Kind)
			}
		}
	}
	return objs
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func decodeStrict(t *testing.T, file string, i int, doc string, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
		t.Fatalf("%s document %d: %v", file, i, err)
	}
}

// TestKubernetesStrictDecoding: a misspelt field fails decoding, so the
// manifests' checks cannot pass over one.
func TestKubernetesStrictDecoding(t *testing.T) {
	doc := "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replica: 2\n"
	if err := yaml.UnmarshalStrict([]byte(doc), &appsv1.Deployment{}); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Errorf("strict decoding of spec.replica: %v, want an unknown field error", err)
	}
}

// container returns the named container of a pod template.
func container(t *testing.T, spec corev1.PodSpec, name string, init bool) corev1.Container {
	t.Helper()
	list := spec.Containers
	if init {
		list = spec.InitContainers
	}
	for _, c := range list {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s (init: %t)", name, init)
	return corev1.Container{}
}

func hasPort(c corev1.Container, name string) bool {
	return slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == name })
}

func requireHardened(t *testing.T, what string, pod corev1.PodSpec, c corev1.Container) {
	t.Helper()
	if sc := pod.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("%s: pod securityContext %+v: want runAsNonRoot and a non-zero runAsUser", what, pod.SecurityContext)
	}
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s: container securityContext %+v: want no privilege escalation, a read-only root and every capability dropped", what, sc)
	}
}

// mountDir returns the mount path of a volume in c, or "".
func mountDir(c corev1.Container, volume string) string {
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m.MountPath
		}
	}
	return ""
}

// TestKubernetesControlPlane: two replicas with readiness on /readyz and
// liveness on /healthz of the admin port, a Service and a
// PodDisruptionBudget selecting exactly those pods, the ServiceAccount the
// pods use, and a ConfigMap whose settings file the real binary accepts at
// the path the container reads it from.
func TestKubernetesControlPlane(t *testing.T) {
	objs := decodeManifests(t, "kubernetes/trellis.yaml")
	d := objs.deployments["trellis"]
	if d == nil {
		t.Fatal("no trellis Deployment")
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2", d.Spec.Replicas)
	}
	selector, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	podLabels := labels.Set(d.Spec.Template.Labels)
	if !selector.Matches(podLabels) {
		t.Errorf("Deployment selector %s does not match its pods' labels %v", selector, podLabels)
	}
	pod := d.Spec.Template.Spec
	if _, ok := objs.serviceAccounts[pod.ServiceAccountName]; !ok {
		t.Errorf("pods use the ServiceAccount %q, which the manifest does not define", pod.ServiceAccountName)
	}
	c := container(t, pod, "trellis", false)
	requireHardened(t, "trellis", pod, c)
	for _, probe := range []struct {
		what string
		p    *corev1.Probe
		want string
	}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
		if probe.p == nil || probe.p.HTTPGet == nil {
			t.Errorf("%s probe: want an httpGet probe on %s", probe.what, probe.want)
			continue
		}
		if probe.p.HTTPGet.Path != probe.want || !hasPort(c, probe.p.HTTPGet.Port.String()) {
			t.Errorf("%s probe %s on port %s: want %s on a named container port", probe.what, probe.p.HTTPGet.Path, probe.p.HTTPGet.Port.String(), probe.want)
		}
	}

	svc := objs.services["trellis"]
	if svc == nil {
		t.Fatal("no trellis Service")
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) || len(svc.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not select the trellis pods", svc.Spec.Selector)
	}
	for _, p := range svc.Spec.Ports {
		if !hasPort(c, p.TargetPort.String()) {
			t.Errorf("Service port %s targets %s, not a container port", p.Name, p.TargetPort.String())
		}
	}
	pdb := objs.pdbs["trellis"]
	if pdb == nil {
		t.Fatal("no trellis PodDisruptionBudget")
	}
	pdbSel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || !pdbSel.Matches(podLabels) || pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() < 1 {
		t.Errorf("PodDisruptionBudget selector %v, minAvailable %v: want the trellis pods, at least 1", pdb.Spec.Selector, pdb.Spec.MinAvailable)
	}

	// The settings: args --config PATH, PATH in the ConfigMap's volume.
	if len(c.Args) != 3 || c.Args[0] != "server" || c.Args[1] != "--config" {
		t.Fatalf("container args %q, want server --config FILE", c.Args)
	}
	var cm *corev1.ConfigMap
	var key string
	for _, v := range pod.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		if dir := mountDir(c, v.Name); dir != "" && path.Dir(c.Args[2]) == dir {
			cm, key = objs.configMaps[v.ConfigMap.Name], path.Base(c.Args[2])
		}
	}
	if cm == nil || cm.Data[key] == "" {
		t.Fatalf("the container reads %s, which no ConfigMap in the manifest provides", c.Args[2])
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			env[e.Name] = "from-secret" // the value the kubelet would fill in
		} else {
			env[e.Name] = e.Value
		}
	}
	s := effectiveSettings(t, cm.Data[key], env)
	requireSetting(t, "ConfigMap", s, "admin-listen", "0.0.0.0:18001")
	requireSetting(t, "ConfigMap", s, "xds-listen", "0.0.0.0:18000")
	requireSetting(t, "Deployment env", s, "consul-token", "<redacted>") // set from the secret
	for _, p := range c.Ports {
		if !strings.HasSuffix(s[p.Name+"-listen"].(string), ":"+strconv.Itoa(int(p.ContainerPort))) {
			t.Errorf("container port %s %d, but the server listens on %v", p.Name, p.ContainerPort, s[p.Name+"-listen"])
		}
	}
}

// TestKubernetesWorkload: the sample workload's init container writes a
// bootstrap (run through the real trellis bootstrap) into a volume the
// workload mounts where GRPC_XDS_BOOTSTRAP points, and the SPIRE CSI driver
// mounts the Workload API socket named by SPIFFE_ENDPOINT_SOCKET.
func TestKubernetesWorkload(t *testing.T) {
	objs := decodeManifests(t, "kubernetes/workload-example.yaml")
	d := objs.deployments["echo"]
	if d == nil {
		t.Fatal("no echo Deployment")
	}
	pod := d.Spec.Template.Spec
	if _, ok := objs.serviceAccounts[pod.ServiceAccountName]; !ok {
		t.Errorf("pods use the ServiceAccount %q, which the manifest does not define", pod.ServiceAccountName)
	}
	initC := container(t, pod, "xds-bootstrap", true)
	echo := container(t, pod, "echo", false)
	requireHardened(t, "echo", pod, echo)
	requireHardened(t, "xds-bootstrap", pod, initC)

	args := slices.Clone(initC.Args)
	for i := range args {
		args[i] = strings.ReplaceAll(args[i], "$(POD_NAME)", "echo-7d9f-abcde")
	}
	out := checkBootstrapArgs(t, args, "trellis.trellis.svc:18000")
	env := map[string]string{}
	for _, e := range echo.Env {
		env[e.Name] = e.Value
	}
	if env["GRPC_XDS_BOOTSTRAP"] != out {
		t.Errorf("GRPC_XDS_BOOTSTRAP=%q, the init container writes %q", env["GRPC_XDS_BOOTSTRAP"], out)
	}
	var csiVolume string
	for _, v := range pod.Volumes {
		switch {
		case v.CSI != nil && v.CSI.Driver == "csi.spiffe.io":
			csiVolume = v.Name
			if v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly {
				t.Errorf("the SPIFFE CSI volume is not read-only")
			}
		case v.EmptyDir != nil:
			if dir := mountDir(initC, v.Name); dir == path.Dir(out) && mountDir(echo, v.Name) != dir {
				t.Errorf("the bootstrap volume %s is at %s in the init container, %q in echo", v.Name, dir, mountDir(echo, v.Name))
			}
		}
	}
	if csiVolume == "" {
		t.Fatal("no csi.spiffe.io volume for the Workload API socket")
	}
	socketDir := mountDir(echo, csiVolume)
	if socketDir == "" || !strings.HasPrefix(env["SPIFFE_ENDPOINT_SOCKET"], "unix://"+socketDir+"/") {
		t.Errorf("SPIFFE_ENDPOINT_SOCKET=%q, the CSI volume is mounted at %q", env["SPIFFE_ENDPOINT_SOCKET"], socketDir)
	}
	echoArgs := slices.Clone(echo.Args)
	for i := range echoArgs {
		echoArgs[i] = strings.NewReplacer("$(POD_NAME)", "echo-7d9f-abcde", "$(POD_IP)", "10.1.2.3").Replace(echoArgs[i])
	}
	checkEchoFlags(t, "echo-server", echoArgs)
}
