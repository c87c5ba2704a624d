package bootstrap_test

import (
	"encoding/json"
	"net/url"
	"testing"

	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/xds"

	"github.com/trellis-mesh/trellis/internal/bootstrap"
)

// credsChoices are channel_creds lists for the fuzzer to pick from, the
// last one replaced by raw fuzz input.
var credsChoices = []string{
	"",
	`[{"type":"insecure"}]`,
	`[{"type":"tls","config":{"certificate_file":"/c.pem","private_key_file":"/k.pem","ca_certificate_file":"/ca.pem"}},{"type":"insecure"}]`,
}

const fileWatcher = `{"plugin_name":"file_watcher","config":{"certificate_file":"/c.pem","private_key_file":"/k.pem","ca_certificate_file":"/ca.pem","refresh_interval":"600s"}}`

// FuzzGenerate checks that whatever Generate accepts is valid JSON, and
// that for grpc-go it is a bootstrap grpc-go's own parser accepts.
func FuzzGenerate(f *testing.F) {
	f.Add("127.0.0.1:18000", "dns://127.0.0.1:8600/trellis-xds.service.consul:18000", "echo-1", "echo", "z1", "r1", "team", "payments", byte(0), byte(0), false, "")
	f.Add("[::1]:18000", "", "node\"with\\quotes", "", "", "", "k", "v\u00e9", byte(2), byte(1), true, `[{"type":"insecure"}]`)
	f.Add("xds.example:443", "", "n", "c", "", "", "", "", byte(3), byte(2), true, `{"not":"a list"}`)
	f.Fuzz(func(t *testing.T, server1, server2, nodeID, cluster, zone, region, metaKey, metaValue string, creds, impl byte, providers bool, rawCreds string) {
		cfg := bootstrap.Config{
			Servers: []string{server1},
			NodeID:  nodeID,
			Cluster: cluster,
			Zone:    zone,
			Region:  region,
			For:     bootstrap.Implementations()[int(impl)%len(bootstrap.Implementations())],
		}
		if server2 != "" {
			cfg.Servers = append(cfg.Servers, server2)
		}
		if metaKey != "" {
			cfg.Metadata = map[string]string{metaKey: metaValue}
		}
		if i := int(creds) % (len(credsChoices) + 1); i < len(credsChoices) {
			cfg.ChannelCreds = json.RawMessage(credsChoices[i])
		} else {
			cfg.ChannelCreds = json.RawMessage(rawCreds)
		}
		if providers {
			cfg.CertificateProviders = map[string]json.RawMessage{bootstrap.CertificateProviderInstance: json.RawMessage(fileWatcher)}
		}
		out, err := bootstrap.Generate(cfg)
		if err != nil {
			return
		}
		var doc map[string]any
		if err := json.Unmarshal(out, &doc); err != nil {
			t.Fatalf("Generate wrote invalid JSON: %v\n%s", err, out)
		}
		if cfg.For != bootstrap.ForGo {
			return
		}
		// grpc-go's parser runs when an xDS resolver is built. The servers
		// are pointed at a closed loopback port first, so that building it
		// does not reach out anywhere: a server_uri is only a string to
		// the parser.
		servers, _ := doc["xds_servers"].([]any)
		for _, s := range servers {
			if m, ok := s.(map[string]any); ok {
				m["server_uri"] = "127.0.0.1:1"
			}
		}
		contents, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		if err := parseWithGRPC(contents); err != nil {
			t.Errorf("grpc-go refuses the bootstrap Generate wrote: %v\n%s", err, out)
		}
	})
}

// parseWithGRPC has grpc-go parse a bootstrap by building an xDS resolver
// from it, and closes the resolver.
func parseWithGRPC(contents []byte) error {
	builder, err := xds.NewXDSResolverWithConfigForTesting(contents)
	if err != nil {
		return err
	}
	r, err := builder.Build(resolver.Target{URL: url.URL{Scheme: "xds", Path: "/echo"}}, discardClientConn{}, resolver.BuildOptions{})
	if err != nil {
		return err
	}
	r.Close()
	return nil
}

// discardClientConn is a resolver.ClientConn that ignores every update;
// the resolver is closed before the server could send any.
type discardClientConn struct {
	resolver.ClientConn
}

func (discardClientConn) UpdateState(resolver.State) error { return nil }
func (discardClientConn) ReportError(error)                {}
func (discardClientConn) ParseServiceConfig(string) *serviceconfig.ParseResult {
	return &serviceconfig.ParseResult{}
}

// TestParseWithGRPCRefuses keeps FuzzGenerate honest: the grpc-go check
// does refuse bootstraps grpc-go would not start with.
func TestParseWithGRPCRefuses(t *testing.T) {
	for _, bad := range []string{
		`{}`,
		`{"xds_servers":[{"server_uri":"127.0.0.1:1","channel_creds":[{"type":"no-such-creds"}]}],"node":{"id":"n"}}`,
		`{"xds_servers":[{"server_uri":"127.0.0.1:1","channel_creds":[{"type":"insecure"}]}],"node":{"id":"n"},"certificate_providers":{"trellis":{"plugin_name":"file_watcher","config":{}}}}`,
	} {
		if err := parseWithGRPC([]byte(bad)); err == nil {
			t.Errorf("grpc-go accepted %s", bad)
		}
	}
	good := `{"xds_servers":[{"server_uri":"127.0.0.1:1","channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":"n"}}`
	if err := parseWithGRPC([]byte(good)); err != nil {
		t.Errorf("grpc-go refused %s: %v", good, err)
	}
}
