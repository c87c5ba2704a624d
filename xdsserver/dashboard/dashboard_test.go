package dashboard_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/dashboard"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
)

func newHandler(t *testing.T, services []dashboard.Service, streams []xdsserver.StreamStatus) *dashboard.Handler {
	t.Helper()
	api, err := statusapi.New(statusapi.Config{Streams: func() []xdsserver.StreamStatus { return streams }, Replica: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := dashboard.New(dashboard.Config{
		Services: func() []dashboard.Service { return services },
		Clients:  api.ListClients,
		Consul: func() dashboard.Consul {
			return dashboard.Consul{Reachable: true, Problems: []string{"ACL: missing service:read"}}
		},
		ClientsPerPage: 2,
		MaxServices:    3,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func get(t *testing.T, h http.Handler, path string) (int, http.Header, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Body)
	return rec.Code, rec.Header(), string(body)
}

func TestAssetsEmbedded(t *testing.T) {
	h := newHandler(t, nil, nil)
	for path, want := range map[string]string{
		"/ui/":          `<script src="app.js">`,
		"/ui/app.js":    "api/state",
		"/ui/style.css": "tr.nacked",
	} {
		code, hdr, body := get(t, h, path)
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET %s: %d, body lacks %q", path, code, want)
		}
		if hdr.Get("Content-Security-Policy") == "" {
			t.Errorf("GET %s: no Content-Security-Policy", path)
		}
	}
	if code, _, _ := get(t, h, "/ui/nothing.js"); code != http.StatusNotFound {
		t.Errorf("GET /ui/nothing.js: %d, want 404", code)
	}
}

func TestStatePagedAndSummarised(t *testing.T) {
	var services []dashboard.Service
	for i := range 5 {
		services = append(services, dashboard.Service{Name: fmt.Sprintf("svc-%d", i), Instances: []dashboard.Instance{{ID: "a", Address: "127.0.0.1", Port: 1, Health: "passing"}}})
	}
	now := time.Now()
	var streams []xdsserver.StreamStatus
	for i := range 5 {
		ts := xdsserver.TypeStatus{TypeURL: resource.ListenerType, ResourceNames: []string{"svc-0"}, SentVersion: "v1", SentAt: now, AckedVersion: "v1", ACKs: 1}
		if i == 3 {
			ts.AckedVersion, ts.NACKs, ts.LastNACKVersion, ts.LastNACKError = "", 1, "v1", "bad listener"
		}
		streams = append(streams, xdsserver.StreamStatus{ID: int64(i + 1), NodeID: fmt.Sprintf("n%d", i+1), OpenedAt: now, Types: []xdsserver.TypeStatus{ts}})
	}
	h := newHandler(t, services, streams)
	var st struct {
		Services     []dashboard.Service `json:"services"`
		MoreServices int                 `json:"more_services"`
		Consul       *dashboard.Consul   `json:"consul"`
		Clients      struct {
			Clients []struct {
				NodeID string `json:"nodeId"`
				State  string `json:"state"`
			} `json:"clients"`
			NextPageToken string `json:"nextPageToken"`
			Summary       struct {
				Clients int `json:"clients"`
				Nacked  int `json:"nacked"`
			} `json:"summary"`
		} `json:"clients"`
	}
	code, _, body := get(t, h, "/ui/api/state")
	if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("state: %d %s", code, body)
	}
	if len(st.Services) != 3 || st.MoreServices != 2 {
		t.Errorf("services %d, more %d, want 3 and 2", len(st.Services), st.MoreServices)
	}
	if len(st.Clients.Clients) != 2 || st.Clients.NextPageToken == "" || st.Clients.Summary.Clients != 5 || st.Clients.Summary.Nacked != 1 {
		t.Errorf("clients page %+v", st.Clients)
	}
	if st.Consul == nil || !st.Consul.Reachable || len(st.Consul.Problems) != 1 {
		t.Errorf("consul %+v", st.Consul)
	}
	code, _, body = get(t, h, "/ui/api/state?state=nacked")
	if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil || len(st.Clients.Clients) != 1 || st.Clients.Clients[0].NodeID != "n4" || st.Clients.Clients[0].State != "SYNC_STATE_NACKED" {
		t.Errorf("nacked clients: %d %s", code, body)
	}
	if code, _, body := get(t, h, "/ui/api/state?state=late"); code != http.StatusBadRequest || !strings.Contains(body, "synced, stale or nacked") {
		t.Errorf("bad state: %d %s", code, body)
	}
	if code, _, body := get(t, h, "/ui/api/state?page_token=zz"); code != http.StatusBadRequest || !strings.Contains(body, "page_token") {
		t.Errorf("bad page token: %d %s", code, body)
	}
}

// TestGraph: the state carries the service graph when there is one, the
// busiest MaxEdges edges sorted by source and destination, and no graph
// when load reporting is off.
func TestGraph(t *testing.T) {
	api, err := statusapi.New(statusapi.Config{Streams: func() []xdsserver.StreamStatus { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	edges := []dashboard.Edge{
		{Source: "web", Destination: "echo", RatePerSecond: 5, ErrorRatio: 0.1, Succeeded: 90, Errored: 10},
		{Source: "api", Destination: "echo", RatePerSecond: 1},
		{Source: "web", Destination: "billing", RatePerSecond: 9},
	}
	for _, c := range []struct {
		name      string
		graph     func() []dashboard.Edge
		wantEdges []string
		wantMore  int
	}{
		{name: "off", graph: nil},
		{name: "busiest", graph: func() []dashboard.Edge { return edges }, wantEdges: []string{"web->billing", "web->echo"}, wantMore: 1},
		{name: "empty", graph: func() []dashboard.Edge { return nil }, wantEdges: []string{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, err := dashboard.New(dashboard.Config{
				Services: func() []dashboard.Service { return nil },
				Clients:  api.ListClients,
				Graph:    c.graph,
				MaxEdges: 2,
			})
			if err != nil {
				t.Fatal(err)
			}
			code, _, body := get(t, h, "/ui/api/state")
			var st struct {
				Graph *dashboard.Graph `json:"graph"`
			}
			if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
				t.Fatalf("state: %d %s", code, body)
			}
			if c.graph == nil {
				if st.Graph != nil {
					t.Fatalf("graph %+v with load reporting off, want none", st.Graph)
				}
				return
			}
			if st.Graph == nil {
				t.Fatalf("no graph in %s", body)
			}
			got := []string{}
			for _, e := range st.Graph.Edges {
				got = append(got, e.Source+"->"+e.Destination)
			}
			if strings.Join(got, ",") != strings.Join(c.wantEdges, ",") || st.Graph.MoreEdges != c.wantMore {
				t.Errorf("edges %v (+%d), want %v (+%d)", got, st.Graph.MoreEdges, c.wantEdges, c.wantMore)
			}
			if c.wantMore > 0 && (st.Graph.Edges[1].ErrorRatio != 0.1 || st.Graph.Edges[1].Errored != 10) {
				t.Errorf("web->echo %+v, want error ratio 0.1 and 10 errored", st.Graph.Edges[1])
			}
		})
	}
	if code, _, body := get(t, newHandler(t, nil, nil), "/ui/app.js"); code != http.StatusOK || !strings.Contains(body, "renderGraph") {
		t.Errorf("app.js: %d, lacks the graph", code)
	}
}
