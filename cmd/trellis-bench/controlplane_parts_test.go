package main

import (
	"context"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	body := `# HELP consul_api_http x
# TYPE consul_api_http summary
consul_api_http_count{method="GET",path="v1_health_service_"} 12
consul_api_http_count{method="PUT",path="v1_txn"} 3
consul_api_http_count 0
consul_api_http_count_other 5
trellis_consul_requests_total{code="200",endpoint="a,b"} 7
trellis_consul_requests_total{code="429",endpoint="c"} 2
`
	tests := []struct {
		name  string
		want  float64
		count int
	}{
		{name: "consul_api_http_count", want: 15, count: 3},
		{name: "trellis_consul_requests_total", want: 9, count: 2},
		{name: "absent_metric", want: 0, count: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseMetrics(body, tt.name)
			var sum float64
			for _, s := range got {
				sum += s.value
			}
			if len(got) != tt.count || sum != tt.want {
				t.Errorf("parseMetrics(%q) = %v, want %d samples summing to %g", tt.name, got, tt.count, tt.want)
			}
		})
	}
	got := parseMetrics(body, "trellis_consul_requests_total")
	if got[0].labels["endpoint"] != "a,b" || got[1].labels["code"] != "429" {
		t.Errorf("labels = %v, %v; want endpoint a,b and code 429", got[0].labels, got[1].labels)
	}
}

func TestSummarize(t *testing.T) {
	var ms []float64
	for i := 100; i >= 1; i-- {
		ms = append(ms, float64(i))
	}
	if got, want := summarize(ms), (dist{N: 100, P50: 50, P99: 99, Max: 100}); got != want {
		t.Errorf("summarize(1..100) = %+v, want %+v", got, want)
	}
	if got, want := summarize([]float64{7}), (dist{N: 1, P50: 7, P99: 7, Max: 7}); got != want {
		t.Errorf("summarize([7]) = %+v, want %+v", got, want)
	}
	if got := summarize(nil); got != (dist{}) {
		t.Errorf("summarize(nil) = %+v, want zero", got)
	}
}

func TestProcReaders(t *testing.T) {
	before, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until the kernel's tick-granular counter moves.
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for {
		for i := range 1_000_000 {
			x += i
		}
		after, err := procCPU(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if after > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU time did not move from %s in 10 s of spinning (%d)", before, x)
		}
	}
	rss, err := procRSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rss < 1<<20 {
		t.Errorf("RSS %d bytes, want at least 1 MiB for a Go test binary", rss)
	}
}

func TestIntListFlag(t *testing.T) {
	var l intList
	if err := l.Set("1000,100,1000"); err != nil || l.String() != "100,1000" {
		t.Errorf("Set(1000,100,1000) = %v, %q; want sorted, deduplicated 100,1000", err, l.String())
	}
	for _, bad := range []string{"", "0", "-5", "10,x"} {
		if err := l.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}

func TestConsulSchemeFlag(t *testing.T) {
	for _, bad := range []string{"", "HTTPS", "grpc", "https,http"} {
		err := controlplaneMain(context.Background(), []string{"-consul-scheme", bad}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "-consul-scheme") || !strings.Contains(err.Error(), "accepted: https, http") {
			t.Errorf("-consul-scheme %q: error %v, want one naming the flag and its accepted values", bad, err)
		}
	}
}

func TestConsulEndpoint(t *testing.T) {
	a := &consulAgent{addr: "127.0.0.1:8500", httpsAddr: "127.0.0.1:8501", caFile: "/run/consul-tls/ca.pem"}
	tests := []struct {
		scheme   string
		wantAddr string
		wantEnv  []string
	}{
		{scheme: consulSchemeHTTPS, wantAddr: "https://127.0.0.1:8501", wantEnv: []string{"CONSUL_HTTP_ADDR=https://127.0.0.1:8501", "CONSUL_CACERT=/run/consul-tls/ca.pem"}},
		{scheme: consulSchemeHTTP, wantAddr: "127.0.0.1:8500", wantEnv: []string{"CONSUL_HTTP_ADDR=127.0.0.1:8500"}},
	}
	for _, tt := range tests {
		e := a.endpoint(tt.scheme)
		if e.addr != tt.wantAddr || !slices.Equal(e.env(), tt.wantEnv) {
			t.Errorf("endpoint(%s) = %q with env %q, want %q with env %q", tt.scheme, e.addr, e.env(), tt.wantAddr, tt.wantEnv)
		}
	}
}
