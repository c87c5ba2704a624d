package identity

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestDefaultScheme(t *testing.T) {
	want, err := NewScheme(DefaultTemplate)
	if err != nil {
		t.Fatalf("NewScheme(DefaultTemplate): %v", err)
	}
	got := DefaultScheme()
	if got.Template() != want.Template() || !cmp.Equal(got.segments, want.segments) {
		t.Errorf("DefaultScheme() = %v %q, want %v %q", got, got.segments, want, want.segments)
	}
}

func TestNewScheme(t *testing.T) {
	tests := []struct {
		name     string
		template string
		wantErr  string
	}{
		{name: "default", template: DefaultTemplate},
		{name: "service only", template: "/{service}"},
		{name: "custom literals", template: "/mesh/v1/{datacenter}/{service}"},
		{name: "relative", template: "ns/{namespace}/svc/{service}", wantErr: "must start with '/'"},
		{name: "empty", template: "", wantErr: "must start with '/'"},
		{name: "no service", template: "/ns/{namespace}", wantErr: "must contain {service}"},
		{name: "duplicate placeholder", template: "/{service}/{service}", wantErr: "used more than once"},
		{name: "partial segment", template: "/svc-{service}", wantErr: "whole segment"},
		{name: "unknown placeholder", template: "/{partition}/{service}", wantErr: "whole segment"},
		{name: "empty segment", template: "/ns//{service}", wantErr: "segment 2"},
		{name: "trailing slash", template: "/svc/{service}/", wantErr: "segment 3"},
		{name: "dot segment", template: "/../{service}", wantErr: "segment 1"},
		{name: "bad char", template: "/a b/{service}", wantErr: "segment 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewScheme(tt.template)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewScheme(%q) error = %v, want it to contain %q", tt.template, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewScheme(%q): %v", tt.template, err)
			}
			if s.Template() != tt.template {
				t.Errorf("Template() = %q, want %q", s.Template(), tt.template)
			}
		})
	}
}

func TestSchemeID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("trellis.test")
	tests := []struct {
		name     string
		template string
		w        Workload
		want     string
		wantErr  string
	}{
		{
			name:     "consul compatible",
			template: DefaultTemplate,
			w:        Workload{TrustDomain: td, Datacenter: "dc1", Namespace: "prod", Service: "echo"},
			want:     "spiffe://trellis.test/ns/prod/dc/dc1/svc/echo",
		},
		{
			name:     "namespace defaults",
			template: DefaultTemplate,
			w:        Workload{TrustDomain: td, Datacenter: "dc1", Service: "echo"},
			want:     "spiffe://trellis.test/ns/default/dc/dc1/svc/echo",
		},
		{
			name:     "template without datacenter ignores it",
			template: "/svc/{service}",
			w:        Workload{TrustDomain: td, Datacenter: "dc1", Service: "echo"},
			want:     "spiffe://trellis.test/svc/echo",
		},
		{
			name:     "allowed characters",
			template: DefaultTemplate,
			w:        Workload{TrustDomain: td, Datacenter: "us-east_1", Service: "echo.v2"},
			want:     "spiffe://trellis.test/ns/default/dc/us-east_1/svc/echo.v2",
		},
		{
			name:     "missing datacenter",
			template: DefaultTemplate,
			w:        Workload{TrustDomain: td, Service: "echo"},
			wantErr:  `datacenter ""`,
		},
		{
			name:     "missing service",
			template: DefaultTemplate,
			w:        Workload{TrustDomain: td, Datacenter: "dc1"},
			wantErr:  `service ""`,
		},
		{
			name:     "slash in service",
			template: DefaultTemplate,
			w:        Workload{TrustDomain: td, Datacenter: "dc1", Service: "a/b"},
			wantErr:  `service "a/b"`,
		},
		{
			name:     "uppercase is fine, spaces are not",
			template: DefaultTemplate,
			w:        Workload{TrustDomain: td, Datacenter: "dc1", Service: "Echo Server"},
			wantErr:  "allowed: letters, digits",
		},
		{
			name:     "no trust domain",
			template: DefaultTemplate,
			w:        Workload{Datacenter: "dc1", Service: "echo"},
			wantErr:  "no trust domain",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewScheme(tt.template)
			if err != nil {
				t.Fatalf("NewScheme(%q): %v", tt.template, err)
			}
			got, err := s.ID(tt.w)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ID(%+v) = %v, %v; want error containing %q", tt.w, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ID(%+v): %v", tt.w, err)
			}
			if got.String() != tt.want {
				t.Errorf("ID(%+v) = %s, want %s", tt.w, got, tt.want)
			}
		})
	}
}

func TestSchemeParse(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("trellis.test")
	tests := []struct {
		name     string
		template string
		id       string
		want     Workload
		wantErr  string
	}{
		{
			name:     "consul compatible",
			template: DefaultTemplate,
			id:       "spiffe://trellis.test/ns/default/dc/dc1/svc/echo",
			want:     Workload{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "echo"},
		},
		{
			name:     "custom template",
			template: "/mesh/{datacenter}/{service}",
			id:       "spiffe://trellis.test/mesh/dc2/api",
			want:     Workload{TrustDomain: td, Datacenter: "dc2", Service: "api"},
		},
		{
			name:     "other trust domain",
			template: DefaultTemplate,
			id:       "spiffe://other.test/ns/default/dc/dc1/svc/echo",
			want:     Workload{TrustDomain: spiffeid.RequireTrustDomainFromString("other.test"), Namespace: "default", Datacenter: "dc1", Service: "echo"},
		},
		{
			name:     "literal mismatch",
			template: DefaultTemplate,
			id:       "spiffe://trellis.test/ns/default/dc/dc1/service/echo",
			wantErr:  `segment 5 is "service"`,
		},
		{
			name:     "too few segments",
			template: DefaultTemplate,
			id:       "spiffe://trellis.test/ns/default/svc/echo",
			wantErr:  "4 path segments",
		},
		{
			name:     "too many segments",
			template: DefaultTemplate,
			id:       "spiffe://trellis.test/ns/default/dc/dc1/svc/echo/extra",
			wantErr:  "7 path segments",
		},
		{
			name:     "trust domain only",
			template: DefaultTemplate,
			id:       "spiffe://trellis.test",
			wantErr:  "no path",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewScheme(tt.template)
			if err != nil {
				t.Fatalf("NewScheme(%q): %v", tt.template, err)
			}
			got, err := s.Parse(spiffeid.RequireFromString(tt.id))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%s) = %+v, %v; want error containing %q", tt.id, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%s): %v", tt.id, err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b spiffeid.TrustDomain) bool { return a == b })); diff != "" {
				t.Errorf("Parse(%s) mismatch (-want +got):\n%s", tt.id, diff)
			}
		})
	}
}

func TestSchemeRoundTrip(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("trellis.test")
	for _, tmpl := range []string{DefaultTemplate, "/{service}", "/x/{namespace}/{service}/{datacenter}"} {
		s, err := NewScheme(tmpl)
		if err != nil {
			t.Fatalf("NewScheme(%q): %v", tmpl, err)
		}
		w := Workload{TrustDomain: td, Namespace: "ns1", Datacenter: "dc1", Service: "svc1"}
		id, err := s.ID(w)
		if err != nil {
			t.Fatalf("%s: ID: %v", tmpl, err)
		}
		got, err := s.Parse(id)
		if err != nil {
			t.Fatalf("%s: Parse(%s): %v", tmpl, id, err)
		}
		// Fields the template lacks do not survive the round trip.
		want := w
		if !strings.Contains(tmpl, "{namespace}") {
			want.Namespace = ""
		}
		if !strings.Contains(tmpl, "{datacenter}") {
			want.Datacenter = ""
		}
		if got != want {
			t.Errorf("%s: Parse(ID(%+v)) = %+v, want %+v", tmpl, w, got, want)
		}
	}
}
