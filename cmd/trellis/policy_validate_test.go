package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodPolicies = `# Two valid policies; echo routes to a subset of greeter.
service: echo
subsets:
  - {name: v1, meta: {version: v1}}
routes:
  - match: {method_exact: /trellis.echo.v1.Echo/Echo}
    destination: {subset: v1}
  - match: {service_prefix: /greeter.v1.Greeter/}
    destination: {service: greeter, subset: blue}
---
service: greeter
subsets:
  - {name: blue, tags: [blue]}
`

const badPolicies = `service: echo
defaults:
  retry: {retry_on: [UNAVAILABLE]}
---
service: greeter
routes:
  - match: {percent: 0, method_exact: Greet}
    destination: {subset: v9}
`

func TestPolicyValidateCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("good.yaml", goodPolicies)
	bad := write("bad.yaml", badPolicies)
	unparsable := write("unparsable.yaml", "service: echo\nroutes:\n  - destination: {subset: v1}\n    timeout: 1s\n")
	echoOnly := write("echo.yaml", "service: echo\nroutes:\n  - destination: {service: greeter, subset: blue}\n")
	greeterOnly := write("greeter.yaml", "service: greeter\nsubsets: [{name: green, tags: [green]}]\n")
	empty := write("empty.yaml", "# nothing here\n")

	tests := []struct {
		name  string
		args  []string
		stdin string
		// wantLines must each appear as a whole line of the output.
		wantLines []string
		wantErr   string
		// notWant must not appear anywhere in the output.
		notWant string
	}{
		{
			name:      "good file",
			args:      []string{"-f", good},
			wantLines: []string{"2 policies valid"},
			notWant:   "warning",
		},
		{
			name: "bad file",
			args: []string{"-f", bad},
			wantLines: []string{
				bad + ": document 1 (service echo): defaults.retry.num_retries: required: retries after the first attempt, 1 to 4",
				bad + `: document 2 (service greeter): routes[0].match.method_exact: "Greet" is not a full gRPC method name: use "/package.Service/Method"`,
				bad + `: document 2 (service greeter): routes[0].destination.subset: subset "v9" is not defined in this policy; defined subsets: none`,
				"warning: " + bad + ": document 2 (service greeter): routes[0].match.percent: 0: the route matches practically no call (gRPC still matches one in a million)",
			},
			wantErr: "policy validate: 3 problem(s) found",
			notWant: "valid\n",
		},
		{
			name: "unparsable file",
			args: []string{"-f", unparsable},
			wantLines: []string{
				unparsable + ": document 1 (service echo): routes[0].timeout: unknown field; Route has: name, match, destination, split, settings",
			},
			wantErr: "1 problem(s) found",
		},
		{
			name:      "standard input",
			args:      []string{"-f", "-"},
			stdin:     badPolicies,
			wantLines: []string{"<stdin>: document 1 (service echo): defaults.retry.num_retries: required: retries after the first attempt, 1 to 4"},
			wantErr:   "3 problem(s) found",
		},
		{
			name: "subset of a service in another file",
			args: []string{"-f", echoOnly, "-f", greeterOnly},
			wantLines: []string{
				echoOnly + `: document 1 (service echo): routes[0].destination.subset: subset "blue" is not defined in the policy of service "greeter"; its subsets: green`,
			},
			wantErr: "1 problem(s) found",
		},
		{
			name:      "subset of a service not in the input",
			args:      []string{"-f", echoOnly},
			wantLines: []string{"warning: " + echoOnly + ": document 1 (service echo): destinations in greeter not checked: their policies are not in the input", "1 policy valid"},
		},
		{
			name:      "service defined twice",
			args:      []string{"-f", good, "-f", greeterOnly},
			wantLines: []string{greeterOnly + ": document 1 (service greeter): service: also defined in " + good + " document 2; one policy per service"},
			wantErr:   "1 problem(s) found",
		},
		{
			name:      "no policy in file",
			args:      []string{"-f", empty},
			wantLines: []string{empty + ": no policy found: expected one or more ServicePolicy documents"},
			wantErr:   "1 problem(s) found",
		},
		{
			name:      "missing file",
			args:      []string{"-f", filepath.Join(dir, "missing.yaml")},
			wantLines: []string{filepath.Join(dir, "missing.yaml") + ": open " + filepath.Join(dir, "missing.yaml") + ": no such file or directory"},
			wantErr:   "1 problem(s) found",
		},
		{
			name:    "file flag required",
			args:    []string{},
			wantErr: `-f FILE or --consul is required`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := newPolicyValidateCommand()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetIn(strings.NewReader(tt.stdin))
			cmd.SetArgs(tt.args)
			err := cmd.Execute()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Execute: %v\noutput:\n%s", err, out.String())
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Execute error = %v, want one containing %q\noutput:\n%s", err, tt.wantErr, out.String())
			}
			lines := strings.Split(out.String(), "\n")
			for _, want := range tt.wantLines {
				found := false
				for _, l := range lines {
					if l == want {
						found = true
					}
				}
				if !found {
					t.Errorf("output lacks the line\n  %s\noutput:\n%s", want, out.String())
				}
			}
			if tt.notWant != "" && strings.Contains(out.String(), tt.notWant) {
				t.Errorf("output contains %q:\n%s", tt.notWant, out.String())
			}
		})
	}
}
