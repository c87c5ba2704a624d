package identity

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	grpccertprovider "google.golang.org/grpc/credentials/tls/certprovider"
	_ "google.golang.org/grpc/credentials/tls/certprovider/pemfile" // registers file_watcher
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
