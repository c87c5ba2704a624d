package bootstrap

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestGenerate(t *testing.T) {
	out, err := Generate(Config{
		Servers: []string{"127.0.0.1:18000", "[::1]:18000"},
		NodeID:  "echo-1",
		Cluster: "echo",
		Zone:    "zone-a",
		CertificateProviders: map[string]json.RawMessage{
			"files": json.RawMessage(`{"plugin_name":"file_watcher","config":{"certificate_file":"/c/cert.pem","private_key_file":"/c/key.pem","ca_certificate_file":"/c/ca.pem","refresh_interval":"60s"}}`),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		XDSServers []struct {
			ServerURI string `json:"server_uri"`
		} `json:"xds_servers"`
		Node struct {
			ID       string `json:"id"`
			Locality struct {
				Zone string `json:"zone"`
			} `json:"locality"`
		} `json:"node"`
		ServerTemplate       string                     `json:"server_listener_resource_name_template"`
		CertificateProviders map[string]json.RawMessage `json:"certificate_providers"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if got.Node.ID != "echo-1" || got.Node.Locality.Zone != "zone-a" {
		t.Errorf("node = %+v", got.Node)
	}
	if len(got.XDSServers) != 2 || got.XDSServers[0].ServerURI != "127.0.0.1:18000" || got.XDSServers[1].ServerURI != "[::1]:18000" {
		t.Errorf("xds servers = %+v, want both in order (ordered fallback)", got.XDSServers)
	}
	if got.ServerTemplate != ServerListenerTemplate {
		t.Errorf("server listener template = %q", got.ServerTemplate)
	}
	if _, ok := got.CertificateProviders["files"]; !ok {
		t.Error("certificate provider \"files\" missing")
	}
}

func TestGenerateChannelCreds(t *testing.T) {
	tests := []struct {
		name  string
		creds json.RawMessage
		want  string
	}{
		{name: "default", want: `[{"type":"insecure"}]`},
		{name: "given", creds: json.RawMessage(`[{"type":"trellis_spiffe","config":{"server_spiffe_ids":["spiffe://t.test/cp"]}}]`),
			want: `[{"type":"trellis_spiffe","config":{"server_spiffe_ids":["spiffe://t.test/cp"]}}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Generate(Config{Servers: []string{"a:1", "b:2"}, NodeID: "n", ChannelCreds: tt.creds})
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				XDSServers []struct {
					ChannelCreds json.RawMessage `json:"channel_creds"`
				} `json:"xds_servers"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if len(got.XDSServers) != 2 {
				t.Fatalf("%d servers, want 2", len(got.XDSServers))
			}
			for i, s := range got.XDSServers {
				var compact bytes.Buffer
				if err := json.Compact(&compact, s.ChannelCreds); err != nil {
					t.Fatal(err)
				}
				if compact.String() != tt.want {
					t.Errorf("server %d channel_creds = %s, want %s", i, compact.String(), tt.want)
				}
			}
		})
	}
}

// TestGenerateDNSServer: a DNS target, with or without its DNS server,
// is written as the server URI unchanged.
func TestGenerateDNSServer(t *testing.T) {
	for _, uri := range []string{"dns://127.0.0.1:8600/trellis-xds.service.consul:18000", "dns:///trellis-xds.service.consul:18000"} {
		out, err := Generate(Config{Servers: []string{uri}, NodeID: "n"})
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		var got struct {
			XDSServers []struct {
				ServerURI string `json:"server_uri"`
			} `json:"xds_servers"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		if len(got.XDSServers) != 1 || got.XDSServers[0].ServerURI != uri {
			t.Errorf("%s: servers %+v", uri, got.XDSServers)
		}
	}
}

func TestGenerateRejectsBadInput(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no servers", Config{NodeID: "n"}, "at least one is required"},
		{"no port", Config{Servers: []string{"localhost"}, NodeID: "n"}, `xds server[0] "localhost"`},
		{"bad port", Config{Servers: []string{"localhost:0"}, NodeID: "n"}, "want 1-65535"},
		{"dns without name", Config{Servers: []string{"dns://127.0.0.1:8600"}, NodeID: "n"}, "want dns://<DNS server host:port>/<host>:<port>"},
		{"dns without port", Config{Servers: []string{"dns://127.0.0.1:8600/trellis-xds.service.consul"}, NodeID: "n"}, `name "trellis-xds.service.consul"`},
		{"dns server without port", Config{Servers: []string{"dns://127.0.0.1/trellis-xds.service.consul:18000"}, NodeID: "n"}, `DNS server "127.0.0.1"`},
		{"no node id", Config{Servers: []string{"localhost:1"}}, "node id: required"},
		{"bad provider json", Config{Servers: []string{"localhost:1"}, NodeID: "n",
			CertificateProviders: map[string]json.RawMessage{"x": json.RawMessage(`{`)}}, `certificate provider "x"`},
		{"channel creds not a list", Config{Servers: []string{"localhost:1"}, NodeID: "n",
			ChannelCreds: json.RawMessage(`{"type":"tls"}`)}, "channel creds: want a JSON list"},
		{"empty channel creds", Config{Servers: []string{"localhost:1"}, NodeID: "n",
			ChannelCreds: json.RawMessage(`[]`)}, "channel creds: the list is empty"},
		{"channel creds without type", Config{Servers: []string{"localhost:1"}, NodeID: "n",
			ChannelCreds: json.RawMessage(`[{"type":"tls"},{"config":{}}]`)}, "channel creds[1]: no type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Generate(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
