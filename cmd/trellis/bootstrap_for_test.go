package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/clients"
)

// TestBootstrapFor checks what --for writes for each implementation.
func TestBootstrapFor(t *testing.T) {
	dir := t.TempDir()
	base := []string{"bootstrap", "--xds-server", "127.0.0.1:18000", "--xds-server", "127.0.0.1:18002", "--node-id", "n", "--spiffe-files", dir}
	tests := []struct {
		args        []string
		wantServers int
		wantBundle  bool
		wantRBAC    bool
		wantWarn    string
	}{
		{args: nil, wantServers: 2, wantBundle: true},
		{args: []string{"--for", "go"}, wantServers: 2, wantBundle: true},
		{args: []string{"--for", "node"}, wantServers: 1, wantWarn: "grpc-js-xds uses only the first xDS server"},
		{args: []string{"--for", "node", "--rbac"}, wantServers: 1, wantRBAC: true, wantWarn: "grpc-js-xds uses only the first xDS server"},
		{args: []string{"--for", "cpp"}, wantServers: 2},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := newRootCommand()
			var stdout, stderr syncBuffer
			cmd.SetOut(&stdout)
			cmd.SetErr(&stderr)
			cmd.SetArgs(append(append([]string{}, base...), tt.args...))
			if err := cmd.Execute(); err != nil {
				t.Fatalf("bootstrap: %v\n%s", err, stderr.String())
			}
			var got struct {
				XDSServers []json.RawMessage `json:"xds_servers"`
				Node       struct {
					Locality *json.RawMessage  `json:"locality"`
					Metadata map[string]string `json:"metadata"`
				} `json:"node"`
				CertificateProviders map[string]struct {
					Config map[string]any `json:"config"`
				} `json:"certificate_providers"`
			}
			if err := json.Unmarshal([]byte(stdout.String()), &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
			}
			if got.Node.Locality == nil {
				t.Error("node.locality missing")
			}
			if len(got.XDSServers) != tt.wantServers {
				t.Errorf("%d xds_servers, want %d", len(got.XDSServers), tt.wantServers)
			}
			if _, has := got.CertificateProviders["trellis"].Config["spiffe_trust_bundle_map_file"]; has != tt.wantBundle {
				t.Errorf("bundle map present = %v, want %v", has, tt.wantBundle)
			}
			if rbac := got.Node.Metadata[clients.RBACMetadataKey] == "true"; rbac != tt.wantRBAC {
				t.Errorf("RBAC declared = %v, want %v", rbac, tt.wantRBAC)
			}
			if !strings.Contains(stderr.String(), tt.wantWarn) || (tt.wantWarn == "" && stderr.String() != "") {
				t.Errorf("stderr %q, want %q", stderr.String(), tt.wantWarn)
			}
		})
	}
}

func TestBootstrapForBadInput(t *testing.T) {
	base := []string{"bootstrap", "--xds-server", "127.0.0.1:18000", "--node-id", "n"}
	for _, tt := range []struct {
		args    []string
		wantErr string
	}{
		{args: []string{"--for", "java"}, wantErr: `--for "java": accepted: go, node, cpp`},
		{args: []string{"--rbac"}, wantErr: "--rbac applies to --for node only"},
		{args: []string{"--for", "node", "--spiffe"}, wantErr: `plugin "trellis_spiffe" is not implemented there; accepted: file_watcher`},
		{args: []string{"--for", "cpp", "--spiffe-files", "/id", "--xds-server-tls", "files"}, wantErr: `channel creds for cpp: the implementation accepts only "insecure" and "google_default"`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, err := runCLI(t, "", append(append([]string{}, base...), tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q\noutput: %s", err, tt.wantErr, out)
			}
		})
	}
}
