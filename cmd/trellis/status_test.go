package main

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/admin"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
)

// fixedVersions serves one content version per type URL and name.
type fixedVersions map[string]map[string]string

func (v fixedVersions) ContentVersions(_, typeURL string, names []string) map[string]string {
	out := map[string]string{}
	for _, n := range names {
		if ver, ok := v[typeURL][n]; ok {
			out[n] = ver
		}
	}
	return out
}

// startStatusAPI serves the status API of streams on an admin listener.
func startStatusAPI(t *testing.T, streams []xdsserver.StreamStatus, current fixedVersions) string {
	t.Helper()
	api, err := statusapi.New(statusapi.Config{Streams: func() []xdsserver.StreamStatus { return streams }, Versions: current, Replica: "replica-1"})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	api.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- admin.New(admin.Config{GRPC: gs}).Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		gs.Stop()
		if err := <-done; err != nil {
			t.Errorf("admin server: %v", err)
		}
	})
	return lis.Addr().String()
}

func TestStatusCommand(t *testing.T) {
	now := time.Now()
	ack := func(typeURL, name, content string) xdsserver.TypeStatus {
		return xdsserver.TypeStatus{TypeURL: typeURL, ResourceNames: []string{name}, SentVersion: "v1", SentAt: now, AckedVersion: "v1", AckedAt: now, ACKs: 1,
			SentContent: map[string]string{name: content}}
	}
	nack := ack(resource.ListenerType, "echo", "l1")
	nack.SentVersion, nack.NACKs, nack.LastNACKVersion, nack.LastNACKError = "v2", 1, "v2", "listener echo: bad filter"
	nack.NACKHistory = []xdsserver.NACK{{Version: "v2", Error: "listener echo: bad filter", At: now}}
	streams := []xdsserver.StreamStatus{
		{ID: 1, NodeID: "good", UserAgent: "gRPC Go 1.85.0", Profile: "grpc-go", OpenedAt: now,
			Types: []xdsserver.TypeStatus{ack(resource.ListenerType, "echo", "l1"), ack(resource.EndpointType, "echo", "e2")}},
		{ID: 2, NodeID: "bad", UserAgent: "gRPC Go 1.85.0", Profile: "grpc-go", OpenedAt: now,
			Locality: &xdsserver.Locality{Region: "eu", Zone: "eu-1"}, Types: []xdsserver.TypeStatus{nack}},
		{ID: 3, NodeID: "behind", OpenedAt: now, Types: []xdsserver.TypeStatus{ack(resource.EndpointType, "billing/canary", "b1")}},
	}
	addr := startStatusAPI(t, streams, fixedVersions{
		resource.ListenerType: {"echo": "l1"},
		resource.EndpointType: {"echo": "e2", "billing/canary": "b2"},
	})
	base := []string{"status", "--server", addr}

	out, err := runCLI(t, "", base...)
	if err != nil {
		t.Fatal(err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 {
		t.Fatalf("table: want a header, 3 rows and a summary:\n%s", out)
	}
	for i, want := range [][]string{
		{"CLIENT", "LDS", "RDS", "CDS", "EDS", "REPLICA"},
		{"good", "1", "gRPC Go 1.85.0", "SYNCED", "-", "SYNCED", "replica-1"},
		{"bad", "2", "NACKED"},
		{"behind", "3", "STALE"},
		{"3 clients: 1 synced, 1 stale, 1 nacked"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Fatalf("table line %d lacks %q:\n%s", i, w, out)
			}
		}
	}

	out, err = runCLI(t, "", append(base, "-o", "json", "--state", "nacked")...)
	if err != nil {
		t.Fatal(err, out)
	}
	var list struct {
		Clients []struct {
			NodeID string `json:"nodeId"`
			State  string `json:"state"`
		} `json:"clients"`
		Summary struct {
			Clients int `json:"clients"`
		} `json:"summary"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Clients) != 1 || list.Clients[0].NodeID != "bad" || list.Clients[0].State != "SYNC_STATE_NACKED" {
		t.Fatalf("-o json --state nacked: %v\n%s", err, out)
	}

	out, err = runCLI(t, "", append(base, "-o", "yaml", "--service", "billing")...)
	if err != nil {
		t.Fatal(err, out)
	}
	var fromYAML struct {
		Clients []struct {
			NodeID string `json:"nodeId"`
		} `json:"clients"`
	}
	if err := yaml.Unmarshal([]byte(out), &fromYAML); err != nil || len(fromYAML.Clients) != 1 || fromYAML.Clients[0].NodeID != "behind" {
		t.Fatalf("-o yaml --service billing: %v\n%s", err, out)
	}

	out, err = runCLI(t, "", append(base, "bad")...)
	if err != nil {
		t.Fatal(err, out)
	}
	for _, want := range []string{"Client:      bad", "State:       NACKED", "Locality:    region=eu zone=eu-1", "NACK of v2 at ", "listener echo: bad filter"} {
		if !strings.Contains(out, want) {
			t.Fatalf("detail lacks %q:\n%s", want, out)
		}
	}
	out, err = runCLI(t, "", append(base, "3")...)
	if err != nil {
		t.Fatal(err, out)
	}
	if !strings.Contains(out, "differs:   billing/canary: sent content b1, served now b2") {
		t.Fatalf("detail of the stale client lacks the difference:\n%s", out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "xml"}, `-o "xml": must be json or yaml`},
		{[]string{"--state", "late"}, `--state "late": must be synced, stale or nacked`},
		{[]string{"--stale-after", "0s"}, "--stale-after 0s: must be positive"},
		{[]string{"bad", "--service", "echo"}, "do not apply with CLIENT"},
		{[]string{"nobody"}, `client "nobody": no open stream`},
	} {
		out, err := runCLI(t, "", append(base, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("trellis status %s: %v, want an error naming %q\n%s", strings.Join(tc.args, " "), err, tc.want, out)
		}
	}
}
