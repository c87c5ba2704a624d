package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
)

// TestACLReadyDetail: the server is not ready before the first token
// check, nor while a read permission is missing; a missing write
// permission is listed but leaves it ready. (An in-process Consul answers
// as one with ACLs disabled; TestConsulACLs runs the real one.)
func TestACLReadyDetail(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "ACL support disabled", http.StatusUnauthorized)
	}))
	defer srv.Close()
	cfg := consulapi.DefaultNonPooledConfig()
	cfg.Address, cfg.Scheme = strings.TrimPrefix(srv.URL, "http://"), "http"
	client, err := consulapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	acl, err := consulwatch.NewACL(consulwatch.ACLConfig{Client: client, API: cfg})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if !aclReadyDetail(acl, &b) || !strings.Contains(b.String(), "not checked yet") {
		t.Errorf("ready before the first token check:\n%s", b.String())
	}
	acl.Check(context.Background())
	b.Reset()
	if aclReadyDetail(acl, &b) || !strings.Contains(b.String(), "consul acl: disabled") {
		t.Errorf("not ready with ACLs disabled:\n%s", b.String())
	}
	acl.Report(consulwatch.ACLProblem{Component: "registration", Permission: "service:write on trellis-xds", Source: "test", Hides: "registration"})
	b.Reset()
	if aclReadyDetail(acl, &b) || !strings.Contains(b.String(), "consul acl problem: registration: the token lacks service:write on trellis-xds") {
		t.Errorf("a missing write permission: want listed and ready:\n%s", b.String())
	}
	acl.Report(consulwatch.ACLProblem{Component: "catalog", Permission: consulwatch.PermNodeRead, Source: "test", Hides: "instances"})
	b.Reset()
	if !aclReadyDetail(acl, &b) || !strings.Contains(b.String(), "not ready: the Consul ACL token hides part of what Trellis must read") {
		t.Errorf("a missing read permission: want not ready:\n%s", b.String())
	}
}
