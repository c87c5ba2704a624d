package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/policy/store"
)

// newConsulACL follows what the server's Consul ACL token hides: it checks
// the token against every permission the server's components need (the
// README's minimal policy) and receives what their answers reveal.
func newConsulACL(opts serverOptions, client *consulapi.Client, logger *slog.Logger, reg prometheus.Registerer) (*consulwatch.ACL, error) {
	prefix := strings.TrimLeft(opts.policy.prefix, "/")
	if prefix == "" {
		prefix = store.DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	needs := []consulwatch.ACLNeed{
		{Component: "catalog", Permission: consulwatch.PermServiceRead, Resource: "service", Access: "read",
			What: `list the services (service_prefix "" { policy = "read" })`},
		{Component: "catalog", Permission: consulwatch.PermNodeRead, Resource: "node", Access: "read",
			What: `see any instance, whose node it may not read: every health read is empty (node_prefix "" { policy = "read" })`},
		{Component: "policy", Permission: consulwatch.KeyPermission("read", prefix), Resource: "key", Segment: prefix, Access: "read",
			What: fmt.Sprintf(`read the service policies: they are not applied (key_prefix %q { policy = "read" })`, prefix)},
		{Component: "intentions", Permission: consulwatch.PermIntentionRead, Resource: "intention", Access: "read",
			What: `read the intentions: mTLS services cannot enforce them (service_prefix "" { intentions = "read" })`},
	}
	if opts.policy.apiTokenFile != "" || strings.TrimSpace(os.Getenv(envAPIToken)) != "" || len(opts.policy.authenticators) > 0 {
		needs = append(needs, consulwatch.ACLNeed{Component: "policy", Permission: consulwatch.KeyPermission("write", prefix),
			Resource: "key", Segment: prefix, Access: "write",
			What: fmt.Sprintf(`store policies through the policy API (key_prefix %q { policy = "write" })`, prefix)})
	}
	if opts.ha.service != "" {
		needs = append(needs, consulwatch.ACLNeed{Component: "registration", Permission: "service:write on " + opts.ha.service,
			Resource: "service", Segment: opts.ha.service, Access: "write",
			What: fmt.Sprintf(`register this replica as service %q (service %q { policy = "write" })`, opts.ha.service, opts.ha.service)})
	}
	return consulwatch.NewACL(consulwatch.ACLConfig{
		Client:     client,
		API:        consulAPIConfig(opts),
		Needs:      needs,
		Logger:     logger.With("component", "consul-acl"),
		Registerer: reg,
	})
}

// aclReadyDetail appends what the token lacks to the /readyz detail and
// reports whether it hides anything the server reads. A missing write
// permission (registration, the policy API's writes) is listed but does
// not make the server unready: what it serves is whole.
func aclReadyDetail(acl *consulwatch.ACL, b *strings.Builder) (hides bool) {
	info := acl.Token()
	switch {
	case info.Disabled:
		b.WriteString("consul acl: disabled\n")
	case info.AccessorID != "":
		rules := "readable"
		if !info.RulesReadable {
			rules = "not readable (no acl:read); permissions checked with Consul's authorization API"
		}
		token := "configured"
		if !info.Configured {
			token = "none configured: anonymous"
		}
		fmt.Fprintf(b, "consul acl token: %s (%s), %s, policies: %s; policy rules %s\n",
			info.AccessorID, info.Description, token, strings.Join(info.Policies, ", "), rules)
	}
	if info.Error != "" {
		fmt.Fprintf(b, "consul acl check: %s\n", info.Error)
	}
	if !info.Checked && info.Error == "" {
		// Until the first check, a permission only it can reveal (key:read
		// on an empty prefix) could be missing unseen.
		b.WriteString("consul acl: the token is not checked yet\n")
		hides = true
	}
	for _, p := range acl.Problems() {
		fmt.Fprintf(b, "consul acl problem: %s\n", p)
		if !strings.Contains(p.Permission, ":write") {
			hides = true
		}
	}
	if hides {
		b.WriteString("not ready: the Consul ACL token hides part of what Trellis must read\n")
	}
	return hides
}
