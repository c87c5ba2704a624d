package consulconfig_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestMain checks that no test leaves a goroutine behind: the watcher owns
// its list watches, its probe and its manager, and Run waits for them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testClient is a Consul client of the agent whose idle connections are
// closed when the test ends, so that only the watcher's goroutines remain
// to be checked.
func testClient(t *testing.T, agent *consultest.Agent) *api.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 30 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := api.NewClient(&api.Config{Address: agent.HTTPAddr(), Scheme: "http", Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
