package dashboard_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/dashboard"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
)

// fakeMesh returns n services of two instances each and n streams, each
// subscribed to the four types of one service; every tenth stream NACKed
// its last Listener.
func fakeMesh(n int) ([]dashboard.Service, []xdsserver.StreamStatus) {
	now := time.Now()
	services := make([]dashboard.Service, 0, n)
	for i := range n {
		services = append(services, dashboard.Service{Name: fmt.Sprintf("svc-%05d", i), Instances: []dashboard.Instance{
			{ID: "a", Address: "10.0.0.1", Port: 8080, Health: "passing", Zone: "z1"},
			{ID: "b", Address: "10.0.0.2", Port: 8080, Health: "critical", Zone: "z2"},
		}})
	}
	streams := make([]xdsserver.StreamStatus, 0, n)
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		st := xdsserver.StreamStatus{ID: int64(i + 1), NodeID: fmt.Sprintf("node-%05d", i), UserAgent: "gRPC Go 1.85.0", Profile: "grpc-go",
			Peer: "127.0.0.1:40000", OpenedAt: now}
		for _, typeURL := range []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType} {
			ts := xdsserver.TypeStatus{TypeURL: typeURL, ResourceNames: []string{name}, SentVersion: "v1", SentAt: now, AckedVersion: "v1", ACKs: 1, SentResources: 1}
			if typeURL == resource.ListenerType && i%10 == 0 {
				ts.AckedVersion, ts.NACKs, ts.LastNACKVersion, ts.LastNACKError, ts.LastNACKAt = "", 1, "v1", "listener "+name+": bad", now
				ts.NACKHistory = []xdsserver.NACK{{Version: "v1", Error: "listener " + name + ": bad", At: now}}
			}
			st.Types = append(st.Types, ts)
		}
		streams = append(streams, st)
	}
	return services, streams
}

// stateOf reads /ui/api/state of a dashboard with the default limits over
// the fake mesh of n clients and services, and returns its size and the
// decoded clients part.
func stateOf(t *testing.T, n int, query string) (int, clientsPage) {
	t.Helper()
	services, streams := fakeMesh(n)
	api, err := statusapi.New(statusapi.Config{Streams: func() []xdsserver.StreamStatus { return streams }, Replica: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := dashboard.New(dashboard.Config{
		Services: func() []dashboard.Service { return services },
		Clients:  api.ListClients,
		Client:   api.GetClient,
	})
	if err != nil {
		t.Fatal(err)
	}
	code, _, body := get(t, h, "/ui/api/state"+query)
	var st struct {
		Services     []dashboard.Service `json:"services"`
		MoreServices int                 `json:"more_services"`
		Clients      clientsPage         `json:"clients"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("state of %d clients: %d %.300s", n, code, body)
	}
	if want := min(n, dashboard.DefaultMaxServices); len(st.Services) != want || st.MoreServices != n-want {
		t.Errorf("%d services: %d listed and %d more, want %d and %d", n, len(st.Services), st.MoreServices, want, n-want)
	}
	return len(body), st.Clients
}

type clientsPage struct {
	Clients []struct {
		NodeID string `json:"nodeId"`
		State  string `json:"state"`
	} `json:"clients"`
	NextPageToken string `json:"nextPageToken"`
	Summary       struct {
		Clients int `json:"clients"`
		Synced  int `json:"synced"`
		Nacked  int `json:"nacked"`
	} `json:"summary"`
}

// TestStateBoundedAtTenThousandClients: with 10,000 clients and services
// (fake stream statuses: 10,000 real xDS clients do not fit the machine
// running the tests), a state read is one page of clients with a summary
// of all of them, and the services cut at MaxServices: its size is that of
// a mesh of 500, within the few bytes the larger counts take.
func TestStateBoundedAtTenThousandClients(t *testing.T) {
	small, smallPage := stateOf(t, dashboard.DefaultMaxServices, "")
	large, page := stateOf(t, 10_000, "")
	t.Logf("state JSON: %d bytes at %d clients and services, %d bytes at 10,000", small, dashboard.DefaultMaxServices, large)
	if len(page.Clients) != dashboard.DefaultClientsPerPage || page.NextPageToken == "" {
		t.Errorf("10,000 clients: a page of %d, next page %q; want %d and a token", len(page.Clients), page.NextPageToken, dashboard.DefaultClientsPerPage)
	}
	if page.Summary.Clients != 10_000 || page.Summary.Nacked != 1_000 || page.Summary.Synced != 9_000 {
		t.Errorf("summary %+v, want 10000 clients, 1000 nacked, 9000 synced", page.Summary)
	}
	if len(smallPage.Clients) != dashboard.DefaultClientsPerPage {
		t.Errorf("%d clients: a page of %d", dashboard.DefaultMaxServices, len(smallPage.Clients))
	}
	// The counts and the page token grow by a few digits, nothing else.
	if large > small+256 {
		t.Errorf("state JSON grows with the clients: %d bytes at 10,000 vs %d at %d", large, small, dashboard.DefaultMaxServices)
	}
	const maxBytes = 512 << 10
	if large > maxBytes {
		t.Errorf("state JSON of %d bytes, want at most %d", large, maxBytes)
	}

	// The NACKed ones alone, a page at a time.
	_, nacked := stateOf(t, 10_000, "?state=nacked")
	if len(nacked.Clients) != dashboard.DefaultClientsPerPage || nacked.Clients[0].State != "SYNC_STATE_NACKED" || nacked.Summary.Nacked != 1_000 {
		t.Errorf("nacked page: %d clients, first %+v, summary %+v", len(nacked.Clients), nacked.Clients[0], nacked.Summary)
	}
}

// TestClientDetail: /ui/api/client answers GetClient, with the NACK
// history, for a stream id or a node id; 404 for a client not connected,
// 400 for no client, and 404 when the dashboard has no GetClient.
func TestClientDetail(t *testing.T) {
	_, streams := fakeMesh(20)
	api, err := statusapi.New(statusapi.Config{Streams: func() []xdsserver.StreamStatus { return streams }, Replica: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := dashboard.New(dashboard.Config{Services: func() []dashboard.Service { return nil }, Clients: api.ListClients, Client: api.GetClient})
	if err != nil {
		t.Fatal(err)
	}
	for _, client := range []string{"11", "node-00010"} {
		code, hdr, body := get(t, h, "/ui/api/client?client="+client)
		var resp struct {
			Clients []struct {
				NodeID string `json:"nodeId"`
				Types  []struct {
					TypeURL     string `json:"typeUrl"`
					State       string `json:"state"`
					NackHistory []struct {
						Version string `json:"version"`
						Error   string `json:"error"`
						At      string `json:"at"`
					} `json:"nackHistory"`
				} `json:"types"`
			} `json:"clients"`
		}
		if code != http.StatusOK || hdr.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &resp) != nil {
			t.Fatalf("client %s: %d %s %s", client, code, hdr.Get("Content-Type"), body)
		}
		if len(resp.Clients) != 1 || resp.Clients[0].NodeID != "node-00010" {
			t.Fatalf("client %s: %s", client, body)
		}
		var found bool
		for _, ts := range resp.Clients[0].Types {
			if ts.TypeURL == resource.ListenerType {
				found = ts.State == "SYNC_STATE_NACKED" && len(ts.NackHistory) == 1 &&
					ts.NackHistory[0].Error == "listener svc-00010: bad" && ts.NackHistory[0].At != ""
			}
		}
		if !found {
			t.Errorf("client %s: no NACKed Listener with its NACK text and time in %s", client, body)
		}
	}
	if code, _, body := get(t, h, "/ui/api/client?client=node-99999"); code != http.StatusNotFound || !strings.Contains(body, "node-99999") {
		t.Errorf("unknown client: %d %s", code, body)
	}
	if code, _, body := get(t, h, "/ui/api/client"); code != http.StatusBadRequest || !strings.Contains(body, "client") {
		t.Errorf("no client: %d %s", code, body)
	}
	if code, _, _ := get(t, newHandler(t, nil, nil), "/ui/api/client?client=1"); code != http.StatusNotFound {
		t.Errorf("no GetClient configured: %d, want 404", code)
	}
}
