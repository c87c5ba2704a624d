package integration

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/xdsserver"
)

// streams reads the server's per-stream ACK/NACK tracking.
func (s *trellisServer) streams(t testing.TB) []xdsserver.StreamStatus {
	t.Helper()
	code, body, err := s.get("/debug/xds/streams")
	if err != nil || code != 200 {
		t.Fatalf("GET /debug/xds/streams: %d %v", code, err)
	}
	var out []xdsserver.StreamStatus
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("decode streams: %v\n%s", err, body)
	}
	return out
}

// requireAllACKed asserts, from the server's own tracking, that no client
// NACKed anything and that every stream has ACKed the last version it was
// sent for every type (waiting briefly for in-flight ACKs).
func (s *trellisServer) requireAllACKed(t testing.TB) {
	t.Helper()
	var last []xdsserver.StreamStatus
	waitFor(t, 15*time.Second, "every stream to ACK its last response", func() error {
		last = s.streams(t)
		if len(last) == 0 {
			return fmt.Errorf("no ADS streams")
		}
		for _, st := range last {
			for _, ty := range st.Types {
				if ty.NACKs > 0 {
					t.Fatalf("stream %d (node %s) NACKed %s version %s: %s\n%s",
						st.ID, st.NodeID, ty.TypeURL, ty.LastNACKVersion, ty.LastNACKError, jsonIndent(last))
				}
				if ty.SentVersion == "" {
					continue
				}
				if ty.Pending || ty.AckedVersion != ty.SentVersion {
					return fmt.Errorf("stream %d %s: sent %s, acked %q", st.ID, ty.TypeURL, ty.SentVersion, ty.AckedVersion)
				}
			}
		}
		return nil
	})
	acks := 0
	for _, st := range last {
		for _, ty := range st.Types {
			acks += ty.ACKs
		}
	}
	if acks == 0 {
		t.Fatalf("no ACK recorded at all:\n%s", jsonIndent(last))
	}
}

// requireNoNACKsInMetrics asserts from the server's counters, which outlive
// the streams, that clients ACKed responses and NACKed none.
func (s *trellisServer) requireNoNACKsInMetrics(t testing.TB) {
	t.Helper()
	code, body, err := s.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	sum := func(metric string) float64 {
		var total float64
		for _, line := range strings.Split(body, "\n") {
			if !strings.HasPrefix(line, metric+"{") && !strings.HasPrefix(line, metric+" ") {
				continue
			}
			fields := strings.Fields(line)
			v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			total += v
		}
		return total
	}
	if n := sum("trellis_xds_nacks_total"); n != 0 {
		t.Errorf("%v NACKs recorded", n)
	}
	if n := sum("trellis_xds_acks_total"); n == 0 {
		t.Errorf("no ACK recorded")
	}
}
