package translate

import (
	"log/slog"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSkipLogAttrs(t *testing.T) {
	tests := []struct {
		name string
		skip Skip
		want []slog.Attr
	}{
		{"service", Skip{Service: "a", Reason: "r"}, []slog.Attr{
			slog.String("kind", "left_out"), slog.String("service", "a"), slog.String("subject", "service"), slog.String("reason", "r")}},
		{"instance", Skip{Service: "a", Instance: "n/i", Reason: "r"}, []slog.Attr{
			slog.String("kind", "left_out"), slog.String("service", "a"), slog.String("subject", `instance "n/i"`),
			slog.String("instance", "n/i"), slog.String("reason", "r")}},
		{"policy route, warning, profile", Skip{Kind: SkipWarning, Service: "a", Route: "policy routes[0] (x)", Profile: "grpc-core", Reason: "r"}, []slog.Attr{
			slog.String("kind", "warning"), slog.String("service", "a"), slog.String("subject", "policy routes[0] (x)"),
			slog.String("profile", "grpc-core"), slog.String("reason", "r")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.skip.LogAttrs()
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b slog.Attr) bool { return a.Equal(b) })); diff != "" {
				t.Errorf("LogAttrs (-want +got):\n%s", diff)
			}
		})
	}
	counts := CountKinds([]Skip{{}, {Kind: SkipWarning}, {}})
	if counts[SkipLeftOut] != 2 || counts[SkipWarning] != 1 {
		t.Errorf("CountKinds = %v", counts)
	}
}
