package identity

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	grpccertprovider "google.golang.org/grpc/credentials/tls/certprovider"
	_ "google.golang.org/grpc/credentials/tls/certprovider/pemfile" // registers file_watcher
	xdsbootstrap "google.golang.org/grpc/xds/bootstrap"
)

func TestProviderFragment(t *testing.T) {
	tests := []struct {
		name    string
		cfg     ProviderConfig
		want    string
		wantErr string
	}{
		{
			name: "address",
			cfg:  ProviderConfig{WorkloadAPIAddr: "unix:///run/spire/agent.sock"},
			want: `{"plugin_name":"trellis_spiffe","config":{"workload_api_addr":"unix:///run/spire/agent.sock"}}`,
		},
		{
			name: "defaults from the environment",
			cfg:  ProviderConfig{},
			want: `{"plugin_name":"trellis_spiffe","config":{}}`,
		},
		{
			name: "pick an SVID",
			cfg:  ProviderConfig{WorkloadAPIAddr: "tcp://127.0.0.1:8999", SPIFFEID: "spiffe://trellis.test/ns/default/dc/dc1/svc/echo"},
			want: `{"plugin_name":"trellis_spiffe","config":{"workload_api_addr":"tcp://127.0.0.1:8999","spiffe_id":"spiffe://trellis.test/ns/default/dc/dc1/svc/echo"}}`,
		},
		{
			name: "own trust domain roots",
			cfg:  ProviderConfig{WorkloadAPIAddr: "unix:///run/spire/agent.sock", Roots: RootsOwnTrustDomain},
			want: `{"plugin_name":"trellis_spiffe","config":{"workload_api_addr":"unix:///run/spire/agent.sock","roots":"own_trust_domain"}}`,
		},
		{
			name:    "unknown roots",
			cfg:     ProviderConfig{Roots: "federated"},
			wantErr: `roots "federated"`,
		},
		{
			name:    "relative socket",
			cfg:     ProviderConfig{WorkloadAPIAddr: "unix://agent.sock"},
			wantErr: "workload_api_addr",
		},
		{
			name:    "not a URI",
			cfg:     ProviderConfig{WorkloadAPIAddr: "/run/spire/agent.sock"},
			wantErr: "workload_api_addr",
		},
		{
			name:    "bad SPIFFE ID",
			cfg:     ProviderConfig{SPIFFEID: "https://trellis.test/echo"},
			wantErr: "spiffe_id",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ProviderFragment(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ProviderFragment(%+v) = %s, %v; want error containing %q", tt.cfg, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ProviderFragment(%+v): %v", tt.cfg, err)
			}
			if string(got) != tt.want {
				t.Errorf("ProviderFragment(%+v) =\n%s\nwant\n%s", tt.cfg, got, tt.want)
			}
		})
	}
}

func TestFileWatcherProvider(t *testing.T) {
	tests := []struct {
		name    string
		dir     string
		refresh time.Duration
		want    map[string]any
		wantErr string
	}{
		{
			name: "default refresh",
			dir:  "/var/run/trellis/identity",
			want: map[string]any{
				"plugin_name": "file_watcher",
				"config": map[string]any{
					"certificate_file":             "/var/run/trellis/identity/cert.pem",
					"private_key_file":             "/var/run/trellis/identity/key.pem",
					"ca_certificate_file":          "/var/run/trellis/identity/ca.pem",
					"spiffe_trust_bundle_map_file": "/var/run/trellis/identity/spiffe_bundle_map.json",
					"refresh_interval":             "60s",
				},
			},
		},
		{
			name:    "fractional refresh, unclean dir",
			dir:     "/id/",
			refresh: 1500 * time.Millisecond,
			want: map[string]any{
				"plugin_name": "file_watcher",
				"config": map[string]any{
					"certificate_file":             "/id/cert.pem",
					"private_key_file":             "/id/key.pem",
					"ca_certificate_file":          "/id/ca.pem",
					"spiffe_trust_bundle_map_file": "/id/spiffe_bundle_map.json",
					"refresh_interval":             "1.5s",
				},
			},
		},
		{name: "relative dir", dir: "identity", wantErr: "must be absolute"},
		{name: "negative refresh", dir: "/id", refresh: -time.Second, wantErr: "must not be negative"},
		{name: "sub-millisecond refresh", dir: "/id", refresh: time.Microsecond, wantErr: "whole milliseconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FileWatcherProvider(tt.dir, tt.refresh)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("FileWatcherProvider(%q, %s) = %s, %v; want error containing %q", tt.dir, tt.refresh, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("FileWatcherProvider(%q, %s): %v", tt.dir, tt.refresh, err)
			}
			var decoded map[string]any
			if err := json.Unmarshal(got, &decoded); err != nil {
				t.Fatalf("fragment is not JSON: %v\n%s", err, got)
			}
			if diff := cmp.Diff(tt.want, decoded); diff != "" {
				t.Errorf("fragment mismatch (-want +got):\n%s", diff)
			}

			// grpc-go's own file_watcher plugin must accept the config.
			var entry struct {
				PluginName string          `json:"plugin_name"`
				Config     json.RawMessage `json:"config"`
			}
			if err := json.Unmarshal(got, &entry); err != nil {
				t.Fatalf("decode fragment: %v", err)
			}
			bc, err := grpccertprovider.ParseConfig(entry.PluginName, entry.Config)
			if err != nil {
				t.Fatalf("grpc-go rejects the fragment: %v", err)
			}
			if !strings.Contains(bc.String(), SyncedFiles(tt.dir).Cert) {
				t.Errorf("grpc-go parsed config %s does not name %s", bc, SyncedFiles(tt.dir).Cert)
			}
		})
	}
}

func TestChannelCreds(t *testing.T) {
	tests := []struct {
		name    string
		cfg     ChannelCredsConfig
		want    string
		wantErr string
	}{
		{
			name: "defaults from the environment",
			want: `{"type":"trellis_spiffe","config":{}}`,
		},
		{
			name: "everything",
			cfg: ChannelCredsConfig{
				WorkloadAPIAddr:    "unix:///run/spire/agent.sock",
				SPIFFEID:           "spiffe://trellis.test/ns/default/dc/dc1/svc/echo",
				ServerSPIFFEIDs:    []string{"spiffe://trellis.test/trellis/control-plane"},
				ServerTrustDomains: []string{"other.test"},
			},
			want: `{"type":"trellis_spiffe","config":{"workload_api_addr":"unix:///run/spire/agent.sock","spiffe_id":"spiffe://trellis.test/ns/default/dc/dc1/svc/echo",` +
				`"server_spiffe_ids":["spiffe://trellis.test/trellis/control-plane"],"server_trust_domains":["other.test"]}}`,
		},
		{name: "bad address", cfg: ChannelCredsConfig{WorkloadAPIAddr: "agent.sock"}, wantErr: "workload_api_addr"},
		{name: "bad own ID", cfg: ChannelCredsConfig{SPIFFEID: "echo"}, wantErr: "spiffe_id"},
		{name: "bad server ID", cfg: ChannelCredsConfig{ServerSPIFFEIDs: []string{"spiffe://a.test/cp", "cp"}}, wantErr: `server_spiffe_ids[1] "cp"`},
		{name: "server ID given as a trust domain", cfg: ChannelCredsConfig{ServerTrustDomains: []string{"spiffe://a.test/cp"}}, wantErr: "server_trust_domains[0]"},
		{name: "bad trust domain", cfg: ChannelCredsConfig{ServerTrustDomains: []string{"A Domain"}}, wantErr: "server_trust_domains[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ChannelCreds(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ChannelCreds(%+v) = %s, %v; want error containing %q", tt.cfg, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ChannelCreds(%+v): %v", tt.cfg, err)
			}
			if string(got) != tt.want {
				t.Errorf("ChannelCreds(%+v) =\n%s\nwant\n%s", tt.cfg, got, tt.want)
			}
		})
	}
}

func TestTLSFilesChannelCreds(t *testing.T) {
	got, err := TLSFilesChannelCreds("/run/trellis/identity/", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"tls","config":{"certificate_file":"/run/trellis/identity/cert.pem","private_key_file":"/run/trellis/identity/key.pem",` +
		`"ca_certificate_file":"/run/trellis/identity/ca.pem","spiffe_trust_bundle_map_file":"/run/trellis/identity/spiffe_bundle_map.json","refresh_interval":"2s"}}`
	if string(got) != want {
		t.Errorf("TLSFilesChannelCreds =\n%s\nwant\n%s", got, want)
	}

	// grpc-go's own "tls" channel credentials must accept the config (the
	// files need not exist yet: they are read on each handshake).
	var entry struct {
		Type   string          `json:"type"`
		Config json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(got, &entry); err != nil {
		t.Fatal(err)
	}
	builder := xdsbootstrap.GetChannelCredentials(entry.Type)
	if builder == nil {
		t.Fatalf("grpc-go has no %q channel credentials", entry.Type)
	}
	_, closeFn, err := builder.Build(entry.Config)
	if err != nil {
		t.Fatalf("grpc-go rejects %s: %v", entry.Config, err)
	}
	closeFn()

	for _, bad := range []struct {
		dir     string
		refresh time.Duration
		wantErr string
	}{
		{dir: "id", wantErr: "must be absolute"},
		{dir: "/id", refresh: -time.Second, wantErr: "must not be negative"},
	} {
		if _, err := TLSFilesChannelCreds(bad.dir, bad.refresh); err == nil || !strings.Contains(err.Error(), bad.wantErr) {
			t.Errorf("TLSFilesChannelCreds(%q, %s) error = %v, want one containing %q", bad.dir, bad.refresh, err, bad.wantErr)
		}
	}
}
