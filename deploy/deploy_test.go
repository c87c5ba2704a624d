package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/trellis-mesh/trellis/internal/testutil/metricsdoc"
)

// bin holds trellis, echo-server and echo-client built from this checkout:
// every setting, flag and command line in the deploy files is run through
// the real binaries.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "trellis-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", dir+string(os.PathSeparator),
		"../cmd/trellis", "../examples/echo/server", "../examples/echo/client")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build trellis and the echo example:", err)
		os.Exit(1)
	}
	// go build names the example binaries after their directories.
	for from, to := range map[string]string{"server": "echo-server", "client": "echo-client"} {
		if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs one of the built binaries and returns its standard output; it
// fails the test, with the standard error, when the binary fails.
func run(t *testing.T, env []string, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes()
}

// settingsEnv drops TRELLIS_* from the test's own environment (the Makefile
// exports TRELLIS_TOOLS_DIR and others), so that only the deploy file's
// variables reach the server's settings.
func settingsEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TRELLIS_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// effectiveSettings runs `trellis server --print-config` with the settings
// file content (when not empty), TRELLIS_* variables env and extra flags,
// as a deployment would start it, and returns the settings it would run
// with. Unknown keys, flags or variables and unparsable values fail.
func effectiveSettings(t *testing.T, config string, env map[string]string, flags ...string) map[string]any {
	t.Helper()
	args := append([]string{"server"}, flags...)
	if config != "" {
		path := filepath.Join(t.TempDir(), "trellis.yaml")
		if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", path)
	}
	var kv []string
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "trellis"), append(args, "--print-config")...)
	cmd.Env = settingsEnv(kv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("trellis %s --print-config: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var got map[string]any
	if err := yaml.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("--print-config output: %v\n%s", err, stdout.String())
	}
	return got
}

// requireSetting fails unless settings[key] is want.
func requireSetting(t *testing.T, what string, settings map[string]any, key string, want any) {
	t.Helper()
	if fmt.Sprint(settings[key]) != fmt.Sprint(want) {
		t.Errorf("%s: %s = %v, want %v", what, key, settings[key], want)
	}
}

// checkBootstrapArgs runs `trellis bootstrap` with a deploy file's
// arguments, writing to a temporary file instead of the -o path, and checks
// that it writes a JSON bootstrap naming serverURI. It returns the -o path
// the file asked for.
func checkBootstrapArgs(t *testing.T, args []string, serverURI string) string {
	t.Helper()
	if len(args) == 0 || args[0] != "bootstrap" {
		t.Fatalf("bootstrap command line %q does not start with bootstrap", args)
	}
	out := filepath.Join(t.TempDir(), "bootstrap.json")
	var asked string
	args = slices.Clone(args)
	for i := range args {
		if (args[i] == "-o" || args[i] == "--output") && i+1 < len(args) {
			asked, args[i+1] = args[i+1], out
		}
	}
	if asked == "" {
		t.Fatalf("bootstrap command line %q has no -o", args)
	}
	run(t, nil, "trellis", args...)
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var boot struct {
		XDSServers []struct {
			ServerURI string `json:"server_uri"`
		} `json:"xds_servers"`
	}
	if err := json.Unmarshal(raw, &boot); err != nil {
		t.Fatalf("bootstrap written for %q is not JSON: %v\n%s", args, err, raw)
	}
	if len(boot.XDSServers) == 0 || boot.XDSServers[0].ServerURI != serverURI {
		t.Errorf("bootstrap for %q: xds_servers %+v, want %s first", args, boot.XDSServers, serverURI)
	}
	return asked
}

// checkEchoFlags runs an echo example binary with a deploy file's flags and
// -h, which it honours only once every flag before it has parsed.
func checkEchoFlags(t *testing.T, name string, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, name), append(slices.Clone(args), "-h")...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("%s %q: %v\n%s", name, args, err, out)
	}
}

// TestREADMEDocumentsEveryFile: deploy/README.md names every file of deploy/.
func TestREADMEDocumentsEveryFile(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".go") || path == "README.md" {
			return err
		}
		n++
		if !bytes.Contains(readme, []byte(filepath.ToSlash(path))) {
			t.Errorf("deploy/README.md does not document %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Errorf("found %d deploy files, want at least 10", n)
	}
}

// dockerStage is one FROM ... stage of a Dockerfile.
type dockerStage struct {
	image, name string
	// instructions are the stage's instructions after FROM, continuation
	// lines joined: [keyword, arguments].
	instructions [][2]string
}

func (s dockerStage) all(keyword string) []string {
	var out []string
	for _, in := range s.instructions {
		if in[0] == keyword {
			out = append(out, in[1])
		}
	}
	return out
}

// parseDockerfile splits a Dockerfile into stages. Only the instructions a
// Dockerfile may hold are accepted.
func parseDockerfile(t *testing.T, path string) []dockerStage {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	known := []string{"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
	var stages []dockerStage
	sc := bufio.NewScanner(bytes.NewReader(raw))
	var pending string
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if pending == "" && (text == "" || strings.HasPrefix(text, "#")) {
			continue
		}
		if strings.HasSuffix(text, "\\") {
			pending += strings.TrimSuffix(text, "\\") + " "
			continue
		}
		text, pending = pending+text, ""
		keyword, args, _ := strings.Cut(text, " ")
		keyword = strings.ToUpper(keyword)
		if !slices.Contains(known, keyword) {
			t.Fatalf("%s:%d: unknown instruction %q", path, line, keyword)
		}
		if keyword == "FROM" {
			f := strings.Fields(args)
			st := dockerStage{image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			} else if len(f) != 1 {
				t.Fatalf("%s:%d: FROM %q: want FROM image [AS name]", path, line, args)
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			if keyword == "ARG" {
				continue
			}
			t.Fatalf("%s:%d: %s before the first FROM", path, line, keyword)
		}
		cur := &stages[len(stages)-1]
		cur.instructions = append(cur.instructions, [2]string{keyword, strings.TrimSpace(args)})
	}
	return stages
}

// TestDockerfile: multi-stage, the runtime stages are minimal and run as a
// non-root user, and each copies from the builder exactly a binary the
// builder builds, from a package that exists, and runs it.
func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, "docker/Dockerfile")
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a builder and runtime stages", len(stages))
	}
	builder := stages[0]
	if !strings.HasPrefix(builder.image, "golang:") || builder.name == "" {
		t.Fatalf("first stage %q AS %q: want a golang builder stage with a name", builder.image, builder.name)
	}
	// The builder's Go is at least the module's.
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+(?:\.\d+)?)$`).FindSubmatch(gomod)
	tag := strings.TrimPrefix(strings.SplitN(builder.image, "-", 2)[0], "golang:")
	if goLine == nil || compareVersions(tag, string(goLine[1])) < 0 {
		t.Errorf("builder image %s: want Go %s or later (go.mod)", builder.image, goLine[1])
	}
	// What the builder builds: -o OUTPUT ./PACKAGE.
	built := map[string]string{}
	buildRE := regexp.MustCompile(`go build [^&]*?-o (\S+) (\./\S+)`)
	for _, r := range builder.all("RUN") {
		for _, m := range buildRE.FindAllStringSubmatch(r, -1) {
			built[m[1]] = m[2]
			if st, err := os.Stat(filepath.Join("..", m[2])); err != nil || !st.IsDir() {
				t.Errorf("builder builds %s, which is not a package directory of the module", m[2])
			}
		}
	}
	if _, ok := built["/out/trellis"]; !ok {
		t.Errorf("builder does not build /out/trellis: %v", built)
	}

	if last := stages[len(stages)-1]; last.name != "trellis" {
		t.Errorf("the default (last) stage is %q, want trellis", last.name)
	}
	for _, st := range stages[1:] {
		t.Run(st.name, func(t *testing.T) {
			if !strings.HasPrefix(st.image, "gcr.io/distroless/static") && !strings.Contains(st.image, "-slim") {
				t.Errorf("runtime image %s: want distroless/static or a -slim image", st.image)
			}
			users := st.all("USER")
			if len(users) == 0 {
				t.Fatalf("stage %s has no USER: it would run as root", st.name)
			}
			user := strings.Split(users[len(users)-1], ":")[0]
			if user == "root" || user == "0" {
				t.Errorf("stage %s runs as %s", st.name, users[len(users)-1])
			}
			var copied []string
			for _, c := range st.all("COPY") {
				f := strings.Fields(c)
				if !slices.Contains(f, "--from="+builder.name) {
					t.Errorf("stage %s copies %q from outside the builder", st.name, c)
					continue
				}
				src, dst := f[len(f)-2], f[len(f)-1]
				if _, ok := built[src]; ok {
					copied = append(copied, dst)
				}
			}
			entry := st.all("ENTRYPOINT")
			if len(entry) != 1 {
				t.Fatalf("stage %s: %d ENTRYPOINT, want 1", st.name, len(entry))
			}
			var argv []string
			if err := json.Unmarshal([]byte(entry[0]), &argv); err != nil || len(argv) == 0 {
				t.Fatalf("stage %s: ENTRYPOINT %s: want the exec (JSON) form", st.name, entry[0])
			}
			if !slices.Contains(copied, argv[0]) {
				t.Errorf("stage %s runs %s, but copies %v from the builder", st.name, argv[0], copied)
			}
			if filepath.Base(argv[0]) != st.name {
				t.Errorf("stage %s runs %s", st.name, argv[0])
			}
		})
	}
}

// compareVersions compares dotted numeric versions.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			fmt.Sscan(as[i], &x)
		}
		if i < len(bs) {
			fmt.Sscan(bs[i], &y)
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

// composeFile is the subset of the Compose specification the local mesh
// uses; decoding rejects any other key.
type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]struct{}       `yaml:"volumes"`
	Networks map[string]struct {
		IPAM struct {
			Config []struct {
				Subnet string `yaml:"subnet"`
			} `yaml:"config"`
		} `yaml:"ipam"`
	} `yaml:"networks"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
		Target     string `yaml:"target"`
	} `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test     []string `yaml:"test"`
		Interval string   `yaml:"interval"`
		Timeout  string   `yaml:"timeout"`
		Retries  int      `yaml:"retries"`
	} `yaml:"healthcheck"`
	Restart  string    `yaml:"restart"`
	Networks yaml.Node `yaml:"networks"`
}

// TestComposeFile: the local mesh parses, its services depend on services
// that exist, its images come from stages of the Dockerfile, and the
// settings, bootstrap and echo flags it passes are accepted by the real
// binaries.
func TestComposeFile(t *testing.T) {
	raw, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("compose/compose.yaml: %v", err)
	}
	for _, s := range []string{"consul", "trellis", "echo-server", "echo-client"} {
		if _, ok := c.Services[s]; !ok {
			t.Errorf("compose file has no %s service", s)
		}
	}
	stageNames := map[string]bool{}
	for _, st := range parseDockerfile(t, "docker/Dockerfile") {
		stageNames[st.name] = true
	}
	conditions := []string{"service_started", "service_healthy", "service_completed_successfully"}
	images := map[string]string{} // image name -> stage
	for name, s := range c.Services {
		if s.Build != nil {
			if s.Build.Dockerfile != "deploy/docker/Dockerfile" || filepath.Clean(filepath.Join("compose", s.Build.Context)) != ".." {
				t.Errorf("%s builds %s in %s, want deploy/docker/Dockerfile in the repository root", name, s.Build.Dockerfile, s.Build.Context)
			}
			if !stageNames[s.Build.Target] {
				t.Errorf("%s builds target %q, not a stage of the Dockerfile", name, s.Build.Target)
			}
			images[s.Image] = s.Build.Target
		}
		for dep, d := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("%s depends on %s, which is not a service", name, dep)
			}
			if !slices.Contains(conditions, d.Condition) {
				t.Errorf("%s depends on %s with condition %q: accepted: %v", name, dep, d.Condition, conditions)
			}
			if d.Condition == "service_healthy" && c.Services[dep].Healthcheck == nil {
				t.Errorf("%s waits for %s to be healthy, which has no healthcheck", name, dep)
			}
		}
		for _, v := range s.Volumes {
			src := strings.Split(v, ":")[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join("compose", src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s mounts volume %s, which is not declared", name, src)
			}
		}
	}
	imageStage := func(s composeService) string {
		if s.Build != nil {
			return s.Build.Target
		}
		return images[s.Image]
	}

	tr := c.Services["trellis"]
	if imageStage(tr) != "trellis" || len(tr.Command) < 3 || tr.Command[0] != "server" || tr.Command[1] != "--config" {
		t.Fatalf("trellis service: stage %q, command %q: want the trellis image with server --config FILE", imageStage(tr), tr.Command)
	}
	config, err := os.ReadFile("compose/trellis.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(tr.Volumes, "./trellis.yaml:"+tr.Command[2]+":ro") {
		t.Errorf("trellis service reads %s, but mounts %v", tr.Command[2], tr.Volumes)
	}
	settings := effectiveSettings(t, string(config), tr.Environment, tr.Command[3:]...)
	requireSetting(t, "compose trellis", settings, "consul-addr", "consul:8500")
	requireSetting(t, "compose trellis", settings, "xds-listen", "0.0.0.0:18000")

	boot := c.Services["bootstrap"]
	if imageStage(boot) != "trellis" {
		t.Errorf("bootstrap service runs image %q, want the trellis image", boot.Image)
	}
	out := checkBootstrapArgs(t, boot.Command, "trellis:18000")
	client := c.Services["echo-client"]
	if got := client.Environment["GRPC_XDS_BOOTSTRAP"]; got != out {
		t.Errorf("echo-client GRPC_XDS_BOOTSTRAP=%q, bootstrap writes %q", got, out)
	}
	if !sharesVolume(boot.Volumes, client.Volumes, filepath.Dir(out)) {
		t.Errorf("bootstrap (%v) and echo-client (%v) share no volume at %s", boot.Volumes, client.Volumes, filepath.Dir(out))
	}
	checkEchoFlags(t, "echo-client", client.Command)
	checkEchoFlags(t, "echo-server", c.Services["echo-server"].Command)
}

// sharesVolume tells whether two services mount the same named volume at
// dir.
func sharesVolume(a, b []string, dir string) bool {
	at := func(vols []string) string {
		for _, v := range vols {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && parts[1] == dir {
				return parts[0]
			}
		}
		return ""
	}
	va := at(a)
	return va != "" && va == at(b)
}

// TestGrafanaDashboard: the dashboard is valid JSON with unique panel ids
// and panels that do not overlap, every metric its queries use is in the
// README's Metrics table (histograms through their _bucket series, counters
// through rate or increase), every family operators need is shown (the
// metrics of issue "Operating the mesh": streams by type and
// implementation, pushes, ACKs and NACKs, push-to-ACK and change-to-push
// latency, Consul errors, contact age and ACL problems, resources, policy
// store errors, LRS traffic), and the LRS panels give call rates and error
// ratios per edge (source, destination).
func TestGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile("grafana/trellis-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			GridPos struct {
				H, W, X, Y int
			} `json:"gridPos"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("grafana/trellis-dashboard.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard has title %q, uid %q, %d panels", dash.Title, dash.UID, len(dash.Panels))
	}
	table, err := metricsdoc.ReadTable("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	ids := map[int]bool{}
	used := map[string]bool{}
	nameRE := regexp.MustCompile(`\btrellis_[a-z0-9_]+`)
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := nameRE.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q uses no trellis metric", p.Title, tg.Expr)
			}
			for _, n := range names {
				metric := n
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base, ok := strings.CutSuffix(n, suffix); ok && table[base].Type == metricsdoc.Histogram {
						metric = base
					}
				}
				e, ok := table[metric]
				switch {
				case !ok:
					t.Errorf("panel %q uses %s, which README.md's Metrics table does not list", p.Title, n)
				case e.Type == metricsdoc.Histogram && metric == n:
					t.Errorf("panel %q uses the histogram %s without its _bucket, _sum or _count series", p.Title, n)
				case e.Type == metricsdoc.Counter && !strings.Contains(tg.Expr, "rate("+n) && !strings.Contains(tg.Expr, "increase("+n):
					t.Errorf("panel %q shows the counter %s without rate() or increase()", p.Title, n)
				}
				used[metric] = true
			}
		}
	}
	for _, must := range []string{
		"trellis_xds_streams", "trellis_xds_subscriptions", "trellis_xds_responses_total", "trellis_xds_acks_total", "trellis_xds_nacks_total",
		"trellis_xds_ack_latency_seconds", "trellis_xds_resources", "trellis_pipeline_change_to_push_seconds",
		"trellis_catalog_consul_reachable", "trellis_consul_errors_total", "trellis_consul_last_contact_age_seconds", "trellis_consul_acl_problems",
		"trellis_policy_errors_total", "trellis_lrs_requests_total", "trellis_lrs_requests_in_progress",
	} {
		if !used[must] {
			t.Errorf("dashboard does not show %s", must)
		}
	}
	// Per edge: grouped by source and destination; the error ratio divides
	// the error results by all of them.
	var rate, ratio bool
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			if !strings.Contains(tg.Expr, "trellis_lrs_requests_total") || !strings.Contains(tg.Expr, "by (source, destination)") {
				continue
			}
			if strings.Contains(tg.Expr, `result="error"`) && strings.Contains(tg.Expr, ") / sum") {
				ratio = true
			} else if !strings.Contains(tg.Expr, "result=") {
				rate = true
			}
		}
	}
	if !rate || !ratio {
		t.Errorf("dashboard shows LRS call rate per edge: %v, error ratio per edge: %v; want both", rate, ratio)
	}
	// Grafana lays panels out on a 24-column grid; overlapping panels hide
	// one another.
	for i, a := range dash.Panels {
		if a.GridPos.W <= 0 || a.GridPos.H <= 0 || a.GridPos.X < 0 || a.GridPos.X+a.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v is outside the 24-column grid", a.Title, a.GridPos)
		}
		for _, b := range dash.Panels[i+1:] {
			if a.GridPos.X < b.GridPos.X+b.GridPos.W && b.GridPos.X < a.GridPos.X+a.GridPos.W &&
				a.GridPos.Y < b.GridPos.Y+b.GridPos.H && b.GridPos.Y < a.GridPos.Y+a.GridPos.H {
				t.Errorf("panels %q and %q overlap", a.Title, b.Title)
			}
		}
	}
	t.Logf("dashboard: %d panels over %d of the %d documented metrics", len(dash.Panels), len(used), len(table))
}

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{{"1.26.8", "1.26.7", 1}, {"1.26", "1.26.0", 0}, {"1.25.9", "1.26", -1}} {
		if got := compareVersions(tc.a, tc.b); (got > 0) != (tc.want > 0) || (got < 0) != (tc.want < 0) {
			t.Errorf("compareVersions(%s, %s) = %d, want sign of %d", tc.a, tc.b, got, tc.want)
		}
	}
}
