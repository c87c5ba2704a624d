package bootstrap

import (
	"encoding/json"
	"strings"
	"testing"
)

// parsed is the part of a bootstrap file the implementation tests read.
type parsed struct {
	XDSServers []struct {
		ServerURI    string            `json:"server_uri"`
		ChannelCreds []json.RawMessage `json:"channel_creds"`
	} `json:"xds_servers"`
	Node struct {
		Locality *json.RawMessage `json:"locality"`
	} `json:"node"`
	CertificateProviders map[string]struct {
		PluginName string         `json:"plugin_name"`
		Config     map[string]any `json:"config"`
	} `json:"certificate_providers"`
}

const fileWatcher = `{"plugin_name":"file_watcher","config":{"certificate_file":"/d/cert.pem","private_key_file":"/d/key.pem","ca_certificate_file":"/d/ca.pem","spiffe_trust_bundle_map_file":"/d/spiffe_bundle_map.json","refresh_interval":"60s"}}`

func TestGenerateForImplementations(t *testing.T) {
	tests := []struct {
		for_        Implementation
		wantServers int
		wantBundle  bool
	}{
		{for_: "", wantServers: 2, wantBundle: true},
		{for_: ForGo, wantServers: 2, wantBundle: true},
		{for_: ForNode, wantServers: 1, wantBundle: false},
		{for_: ForCpp, wantServers: 2, wantBundle: false},
	}
	for _, tt := range tests {
		t.Run(string(tt.for_), func(t *testing.T) {
			out, err := Generate(Config{
				Servers:              []string{"127.0.0.1:18000", "127.0.0.1:18001"},
				NodeID:               "n",
				For:                  tt.for_,
				CertificateProviders: map[string]json.RawMessage{CertificateProviderInstance: json.RawMessage(fileWatcher)},
			})
			if err != nil {
				t.Fatal(err)
			}
			var got parsed
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if got.Node.Locality == nil {
				t.Errorf("node.locality missing (grpc-js-xds refuses the file):\n%s", out)
			}
			if len(got.XDSServers) != tt.wantServers || got.XDSServers[0].ServerURI != "127.0.0.1:18000" {
				t.Errorf("xds servers %+v, want %d starting with the first given", got.XDSServers, tt.wantServers)
			}
			p := got.CertificateProviders[CertificateProviderInstance]
			if p.PluginName != FileWatcherPlugin || p.Config["certificate_file"] != "/d/cert.pem" || p.Config["refresh_interval"] != "60s" {
				t.Errorf("certificate provider %+v", p)
			}
			if _, has := p.Config[bundleMapField]; has != tt.wantBundle {
				t.Errorf("%s present = %v, want %v", bundleMapField, has, tt.wantBundle)
			}
		})
	}
}

func TestGenerateForRejectsWhatTheImplementationCannotRead(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "unknown implementation", cfg: Config{For: "java"}, wantErr: `for "java": accepted: go, node, cpp`},
		{name: "tls creds for node", cfg: Config{For: ForNode, ChannelCreds: json.RawMessage(`[{"type":"tls","config":{}}]`)},
			wantErr: `channel creds for node: the implementation accepts only "insecure" and "google_default"`},
		{name: "in-process provider for cpp", cfg: Config{For: ForCpp, CertificateProviders: map[string]json.RawMessage{
			"trellis": json.RawMessage(`{"plugin_name":"trellis_spiffe","config":{}}`)}},
			wantErr: `certificate provider "trellis" for cpp: plugin "trellis_spiffe" is not implemented there; accepted: file_watcher`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Servers, cfg.NodeID = []string{"127.0.0.1:18000"}, "n"
			_, err := Generate(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
