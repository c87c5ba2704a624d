package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestPolicyValidateConsul: --consul reads the entries of a real Consul,
// prints every field the server would not send as a problem, names the
// services served from their entries, and lets a policy given with -f
// override a service's entries.
func TestPolicyValidateConsul(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	for _, e := range []api.ConfigEntry{
		&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "echo", Protocol: "grpc"},
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "echo", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{QueryParam: []api.ServiceRouteHTTPMatchQueryParam{{Name: "debug", Present: true}}}}},
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathExact: "/trellis.echo.v1.Echo/Reverse"}},
				Destination: &api.ServiceRouteDestination{RequestTimeout: 2e9}},
		}},
	} {
		if _, _, err := client.ConfigEntries().Set(e, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr())

	var out bytes.Buffer
	err := runPolicyValidate(context.Background(), strings.NewReader(""), &out, nil, true)
	if err == nil {
		t.Errorf("no error, want one problem; output:\n%s", out.String())
	}
	for _, want := range []string{
		"consul: service-router/echo: Routes[0].Match.HTTP.QueryParam: ",
		"consul: policies from config entries: echo",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	out.Reset()
	in := strings.NewReader("service: echo\nroutes:\n- {name: all}\n")
	err = runPolicyValidate(context.Background(), in, &out, []string{"-"}, true)
	if err != nil {
		t.Errorf("with a policy for echo: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "consul: the config entries of echo are overridden by its policy in the input") ||
		strings.Contains(out.String(), "QueryParam") {
		t.Errorf("with a policy for echo, want the override and no report of its entries:\n%s", out.String())
	}
}
