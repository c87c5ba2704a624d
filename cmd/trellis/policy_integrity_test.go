package main

import (
	"context"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
)

func TestPolicyForceAndUnreadableKeys(t *testing.T) {
	addr, st, agent := startPolicyAPIAgent(t)
	conn := []string{"--server", addr, "--token", cliToken}
	if out, err := runCLI(t, applyPolicies, append([]string{"policy", "apply", "-f", "-"}, conn...)...); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}

	// greeter without its blue subset, which echo routes to: refused,
	// naming echo's route and --force.
	noBlue := "service: greeter\nsubsets: [{name: green, tags: [green]}]\n"
	out, err := runCLI(t, noBlue, append([]string{"policy", "apply", "-f", "-"}, conn...)...)
	if err == nil {
		t.Fatalf("apply removing a subset echo routes to succeeded:\n%s", out)
	}
	for _, want := range []string{`service "echo" routes[0] (canary): subset "blue" of service "greeter" is not defined`, "--force"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not contain %q", err, want)
		}
	}
	if _, err := runCLI(t, "", append([]string{"policy", "delete", "greeter"}, conn...)...); err == nil || !strings.Contains(err.Error(), `routes[0] (canary)`) {
		t.Errorf("delete of greeter: %v, want the refusal naming echo's route", err)
	}

	// Forced: stored, and the broken route is printed.
	out, err = runCLI(t, noBlue, append([]string{"policy", "apply", "--force", "-f", "-"}, conn...)...)
	if err != nil {
		t.Fatalf("apply --force: %v\n%s", err, out)
	}
	if !strings.Contains(out, "WARNING: forced") || !strings.Contains(out, `service "echo" routes[0] (canary): subset "blue" of service "greeter" no longer exists`) {
		t.Errorf("apply --force output does not report the broken route:\n%s", out)
	}
	stored, err := st.Get(context.Background(), "greeter")
	if err != nil || len(stored.Policy.GetSubsets()) != 1 || stored.Policy.GetSubsets()[0].GetName() != "green" {
		t.Errorf("after apply --force greeter is %v, %v; want the green subset only", stored, err)
	}

	// An unreadable key: list shows the rest and reports the key.
	if _, err := agent.Client(t).KV().Put(&consulapi.KVPair{Key: st.Key("junk"), Value: []byte("junk")}, nil); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI(t, "", append([]string{"policy", "list"}, conn...)...)
	if err != nil {
		t.Fatalf("list with an unreadable key: %v\n%s", err, out)
	}
	if !strings.Contains(out, "echo") || !strings.Contains(out, "greeter") || !strings.Contains(out, "error: key trellis/policies/junk (revision ") {
		t.Errorf("list output:\n%s\nwant echo, greeter and the unreadable key", out)
	}
	if _, err := runCLI(t, "", append([]string{"policy", "get", "junk"}, conn...)...); err == nil || !strings.Contains(err.Error(), "trellis/policies/junk") {
		t.Errorf("get of the unreadable key: %v, want an error naming the key", err)
	}

	// Input that is not UTF-8 is refused before anything is sent.
	if _, err := runCLI(t, "service: caf\xe9\n", append([]string{"policy", "apply", "-f", "-"}, conn...)...); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("apply of invalid UTF-8: %v, want a UTF-8 error", err)
	}
}
