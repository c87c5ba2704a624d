package deploy_test

import (
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
)

// The Nomad job is decoded with HashiCorp's hcl/v2 (MPL-2.0) against a
// schema of the job specification subset the file uses: an attribute or
// block outside it is an error, as is a missing required one. (Nomad's own
// jobspec parser lives in the nomad module, which is not under an open-source
// licence from v1.7 on.)

type nomadFile struct {
	Job nomadJob `hcl:"job,block"`
}

type nomadJob struct {
	Name        string       `hcl:"name,label"`
	Datacenters []string     `hcl:"datacenters"`
	Type        string       `hcl:"type"`
	Update      *nomadUpdate `hcl:"update,block"`
	Groups      []nomadGroup `hcl:"group,block"`
}

type nomadUpdate struct {
	MaxParallel     int    `hcl:"max_parallel"`
	MinHealthyTime  string `hcl:"min_healthy_time"`
	HealthyDeadline string `hcl:"healthy_deadline"`
	AutoRevert      bool   `hcl:"auto_revert"`
}

type nomadGroup struct {
	Name        string            `hcl:"name,label"`
	Count       int               `hcl:"count"`
	Constraints []nomadConstraint `hcl:"constraint,block"`
	Network     nomadNetwork      `hcl:"network,block"`
	Restart     *nomadRestart     `hcl:"restart,block"`
	Services    []nomadService    `hcl:"service,block"`
	Tasks       []nomadTask       `hcl:"task,block"`
}

type nomadConstraint struct {
	Attribute string `hcl:"attribute,optional"`
	Operator  string `hcl:"operator"`
	Value     string `hcl:"value"`
}

type nomadNetwork struct {
	Ports []struct {
		Label  string `hcl:"label,label"`
		Static int    `hcl:"static,optional"`
	} `hcl:"port,block"`
}

type nomadRestart struct {
	Attempts int    `hcl:"attempts"`
	Interval string `hcl:"interval"`
	Delay    string `hcl:"delay"`
	Mode     string `hcl:"mode"`
}

type nomadService struct {
	Name     string       `hcl:"name"`
	Port     string       `hcl:"port"`
	Provider string       `hcl:"provider"`
	Tags     []string     `hcl:"tags,optional"`
	Checks   []nomadCheck `hcl:"check,block"`
}

type nomadCheck struct {
	Name     string `hcl:"name"`
	Type     string `hcl:"type"`
	Port     string `hcl:"port"`
	Path     string `hcl:"path"`
	Interval string `hcl:"interval"`
	Timeout  string `hcl:"timeout"`
}

type nomadTask struct {
	Name   string `hcl:"name,label"`
	Driver string `hcl:"driver"`
	Config struct {
		Image string   `hcl:"image"`
		Args  []string `hcl:"args"`
		Ports []string `hcl:"ports"`
	} `hcl:"config,block"`
	Env *struct {
		Vars map[string]string `hcl:",remain"`
	} `hcl:"env,block"`
	Templates []struct {
		Destination string `hcl:"destination"`
		ChangeMode  string `hcl:"change_mode"`
		Data        string `hcl:"data"`
	} `hcl:"template,block"`
	Resources struct {
		CPU    int `hcl:"cpu"`
		Memory int `hcl:"memory"`
	} `hcl:"resources,block"`
}

// nomadRuntime are the runtime variables the job interpolates, as Nomad
// sets them in a task.
var nomadRuntime = map[string]cty.Value{
	"NOMAD_TASK_DIR": cty.StringVal("local"),
}

// renderNomadTemplate renders the consul-template functions the job's
// template uses: env (from env) and keyOrDefault (its default). Any other
// action is an error, so the check covers all the template does.
func renderNomadTemplate(t *testing.T, data string, env map[string]string) string {
	t.Helper()
	action := regexp.MustCompile(`\{\{\s*(.*?)\s*\}\}`)
	envRE := regexp.MustCompile(`^env "([^"]+)"$`)
	keyRE := regexp.MustCompile(`^keyOrDefault "([^"]+)" "([^"]*)"$`)
	return action.ReplaceAllStringFunc(data, func(a string) string {
		inner := action.FindStringSubmatch(a)[1]
		if m := envRE.FindStringSubmatch(inner); m != nil {
			v, ok := env[m[1]]
			if !ok {
				t.Errorf("template reads env %q, which the test does not model", m[1])
			}
			return v
		}
		if m := keyRE.FindStringSubmatch(inner); m != nil {
			return m[2]
		}
		t.Errorf("template action %q: only env and keyOrDefault are checked", a)
		return ""
	})
}

// TestNomadJob: the job parses against the schema; the server group runs
// two replicas, registered in Consul with a readiness check on /readyz on a
// port the group declares; the rendered settings template, with the task's
// environment, is accepted by the real binary, which reads it from where
// the task's arguments say.
func TestNomadJob(t *testing.T) {
	parser := hclparse.NewParser()
	file, diags := parser.ParseHCLFile("nomad/trellis.nomad.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %s", diags.Error())
	}
	var job nomadFile
	ctx := &hcl.EvalContext{Variables: nomadRuntime}
	if diags := gohcl.DecodeBody(file.Body, ctx, &job); diags.HasErrors() {
		t.Fatalf("decode against the job schema: %s", diags.Error())
	}
	if job.Job.Type != "service" {
		t.Errorf("job type %q, want service", job.Job.Type)
	}
	if u := job.Job.Update; u == nil || u.MaxParallel != 1 {
		t.Errorf("update %+v: want one replica at a time", u)
	} else {
		requireDurations(t, "update", u.MinHealthyTime, u.HealthyDeadline)
	}
	if len(job.Job.Groups) != 1 {
		t.Fatalf("%d groups, want the server group", len(job.Job.Groups))
	}
	g := job.Job.Groups[0]
	if g.Count != 2 {
		t.Errorf("group %s count %d, want 2", g.Name, g.Count)
	}
	if !slices.ContainsFunc(g.Constraints, func(c nomadConstraint) bool { return c.Operator == "distinct_hosts" && c.Value == "true" }) {
		t.Errorf("group %s: no distinct_hosts constraint: both replicas could share a node", g.Name)
	}
	if g.Restart != nil {
		requireDurations(t, "restart", g.Restart.Interval, g.Restart.Delay)
	}
	ports := map[string]bool{}
	for _, p := range g.Network.Ports {
		ports[p.Label] = true
	}
	readiness := false
	for _, s := range g.Services {
		if s.Provider != "consul" || !ports[s.Port] {
			t.Errorf("service %s: provider %q, port %q (ports %v): want consul and a group port", s.Name, s.Provider, s.Port, ports)
		}
		for _, c := range s.Checks {
			requireDurations(t, "check "+c.Name, c.Interval, c.Timeout)
			if c.Type != "http" || !ports[c.Port] {
				t.Errorf("check %s: type %q port %q: want an http check on a group port", c.Name, c.Type, c.Port)
			}
			if s.Name == "trellis-xds" && c.Path == "/readyz" && c.Port == "admin" {
				readiness = true
			}
		}
	}
	if !readiness {
		t.Errorf("no readiness check on /readyz of the admin port for the trellis-xds service")
	}

	if len(g.Tasks) != 1 {
		t.Fatalf("%d tasks, want 1", len(g.Tasks))
	}
	task := g.Tasks[0]
	for _, p := range task.Config.Ports {
		if !ports[p] {
			t.Errorf("task maps port %q, not a group port", p)
		}
	}
	args := task.Config.Args
	if len(args) != 3 || args[0] != "server" || args[1] != "--config" {
		t.Fatalf("task args %q, want server --config FILE", args)
	}
	if len(task.Templates) != 1 {
		t.Fatalf("%d templates, want the settings file", len(task.Templates))
	}
	tpl := task.Templates[0]
	if path.Clean(args[2]) != path.Clean(tpl.Destination) {
		t.Errorf("task reads %s, template renders %s", args[2], tpl.Destination)
	}
	config := renderNomadTemplate(t, tpl.Data, map[string]string{
		"NOMAD_PORT_xds":                 "18000",
		"NOMAD_PORT_admin":               "23456",
		"attr.unique.network.ip-address": "10.0.0.7",
	})
	var env map[string]string
	if task.Env != nil {
		env = task.Env.Vars
	}
	s := effectiveSettings(t, config, env)
	requireSetting(t, "nomad template", s, "xds-listen", "0.0.0.0:18000")
	requireSetting(t, "nomad template", s, "admin-listen", "0.0.0.0:23456")
	requireSetting(t, "nomad template", s, "consul-addr", "10.0.0.7:8500")
	requireSetting(t, "nomad env", s, "register-service", "")
	if _, err := url.Parse("docker://" + task.Config.Image); err != nil || task.Driver != "docker" {
		t.Errorf("task driver %q image %q", task.Driver, task.Config.Image)
	}
}

func requireDurations(t *testing.T, what string, ds ...string) {
	t.Helper()
	for _, d := range ds {
		if _, err := time.ParseDuration(d); err != nil {
			t.Errorf("%s: duration %q: %v", what, d, err)
		}
	}
}

// TestNomadSchemaIsStrict: an attribute outside the schema is an error, so
// TestNomadJob cannot pass over a misspelt key.
func TestNomadSchemaIsStrict(t *testing.T) {
	src := `job "x" {
  datacenters = ["dc1"]
  type = "service"
  count = 2
}`
	file, diags := hclparse.NewParser().ParseHCL([]byte(src), "x.hcl")
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	var job nomadFile
	diags = gohcl.DecodeBody(file.Body, &hcl.EvalContext{Variables: nomadRuntime}, &job)
	if !diags.HasErrors() || !strings.Contains(diags.Error(), `"count"`) {
		t.Errorf("decode of a job with count at job level: %v, want an error naming count", diags)
	}
}
