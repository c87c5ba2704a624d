package translate

import (
	"fmt"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// zoned is a service of three instances in zone a and three in zone b of
// dc1; the first critical of zone a's are critical, and remote are added
// as healthy dc2 instances.
func zoned(critical, remote int) *model.Service {
	svc := &model.Service{Name: "echo"}
	for i := 0; i < 6; i++ {
		zone := "a"
		if i >= 3 {
			zone = "b"
		}
		h := model.HealthPassing
		if i < critical {
			h = model.HealthCritical
		}
		svc.Instances = append(svc.Instances, model.Instance{ID: fmt.Sprintf("echo-%d", i), Node: "n", Address: fmt.Sprintf("10.0.0.%d", i+1),
			Port: 8080, Health: h, Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", Zone: zone})
	}
	for i := 0; i < remote; i++ {
		svc.Instances = append(svc.Instances, model.Instance{ID: fmt.Sprintf("echo-%d", i), Node: "dc2/n", Address: fmt.Sprintf("10.2.0.%d", i+1),
			Port: 8080, Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc2", Zone: "a"})
	}
	model.SortInstances(svc.Instances)
	return svc
}

// layout is a CLA's localities as "region/zone@priority:endpoints".
func layout(t *testing.T, in Input, zone string) []string {
	t.Helper()
	res := Translate(in, Options{})
	variants := (&ZoneSplitter{}).Split(in, res)
	cla := res.Resources.Endpoints["echo"]
	if v, _ := variants[zone]["echo"].(*endpointv3.ClusterLoadAssignment); v != nil {
		if err := v.ValidateAll(); err != nil {
			t.Fatalf("variant for zone %q: %v", zone, err)
		}
		cla = v
	}
	var out []string
	for _, l := range cla.GetEndpoints() {
		out = append(out, fmt.Sprintf("%s/%s@%d:%d", l.GetLocality().GetRegion(), l.GetLocality().GetZone(), l.GetPriority(), len(l.GetLbEndpoints())))
	}
	return out
}

func u32p(n uint32) *uint32 { return &n }

// withThreshold sets ZoneMinHealthyMetaKey to value on every instance of svc.
func withThreshold(svc *model.Service, value string) *model.Service {
	for i := range svc.Instances {
		svc.Instances[i].Meta = map[string]string{ZoneMinHealthyMetaKey: value}
	}
	return svc
}

func TestZoneVariants(t *testing.T) {
	tests := []struct {
		name     string
		svc      *model.Service
		pol      *policyv1.ServicePolicy
		zone     string
		want     []string
		noZoneOf string // a zone with no variant expected
	}{
		{name: "own zone first", svc: zoned(0, 0), zone: "a", want: []string{"dc1/a@0:3", "dc1/b@1:3"}},
		{name: "other zone first for b", svc: zoned(0, 0), zone: "b", want: []string{"dc1/b@0:3", "dc1/a@1:3"}},
		{name: "at the threshold stays", svc: zoned(1, 0), pol: &policyv1.ServicePolicy{Service: "echo", Locality: &policyv1.Locality{MinHealthyPercent: u32p(66)}},
			zone: "a", want: []string{"dc1/a@0:2", "dc1/b@1:3"}},
		{name: "below the default threshold spills", svc: zoned(2, 0), zone: "a", want: []string{"dc1/a@0:1", "dc1/b@0:3"}},
		{name: "threshold 0 keeps the last instance", svc: zoned(2, 0), pol: &policyv1.ServicePolicy{Service: "echo", Locality: &policyv1.Locality{MinHealthyPercent: u32p(0)}},
			zone: "a", want: []string{"dc1/a@0:1", "dc1/b@1:3"}},
		{name: "threshold 100 spills at the first loss", svc: zoned(1, 0), pol: &policyv1.ServicePolicy{Service: "echo", Locality: &policyv1.Locality{MinHealthyPercent: u32p(100)}},
			zone: "a", want: []string{"dc1/a@0:2", "dc1/b@0:3"}},
		{name: "meta threshold keeps the last instance", svc: withThreshold(zoned(2, 0), "30"),
			zone: "a", want: []string{"dc1/a@0:1", "dc1/b@1:3"}},
		{name: "policy threshold wins over meta", svc: withThreshold(zoned(2, 0), "30"), pol: &policyv1.ServicePolicy{Service: "echo", Locality: &policyv1.Locality{MinHealthyPercent: u32p(50)}},
			zone: "a", want: []string{"dc1/a@0:1", "dc1/b@0:3"}},
		{name: "meta threshold 100 spills at the first loss", svc: withThreshold(zoned(1, 0), " 100 "),
			zone: "a", want: []string{"dc1/a@0:2", "dc1/b@0:3"}},
		{name: "invalid meta threshold leaves the default", svc: withThreshold(zoned(2, 0), "30%"),
			zone: "a", want: []string{"dc1/a@0:1", "dc1/b@0:3"}},
		{name: "zone with every instance down", svc: zoned(3, 0), zone: "a", want: []string{"dc1/b@0:3"}},
		{name: "unknown zone gets the shared assignment", svc: zoned(0, 0), zone: "c", want: []string{"dc1/a@0:3", "dc1/b@0:3"}},
		{name: "failover priorities move down", svc: zoned(0, 2), pol: &policyv1.ServicePolicy{Service: "echo", Failover: &policyv1.Failover{Datacenters: []string{"dc2"}}},
			zone: "b", want: []string{"dc1/b@0:3", "dc1/a@1:3", "dc2/a@2:2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Catalog: model.NewSnapshot([]*model.Service{tt.svc})}
			if tt.pol != nil {
				in.Policies = map[string]*policyv1.ServicePolicy{"echo": tt.pol}
			}
			if diff := cmp.Diff(tt.want, layout(t, in, tt.zone)); diff != "" {
				t.Errorf("localities (-want +got):\n%s", diff)
			}
		})
	}
}

// TestZoneThresholdMetaReported: instances whose threshold meta is not a
// percentage are reported by name with the accepted values; when valid
// values differ, the highest wins and the lower ones are reported; the
// reports come once per service, not once per subset cluster.
func TestZoneThresholdMetaReported(t *testing.T) {
	svc := zoned(2, 0)
	for i, v := range []string{"lots", "30", "40", "101", "40"} {
		svc.Instances[i].Meta = map[string]string{ZoneMinHealthyMetaKey: v}
	}
	pol := &policyv1.ServicePolicy{Service: "echo", Subsets: []*policyv1.Subset{{Name: "all", Filter: `Service.Port == 8080`}}}
	in := Input{Catalog: model.NewSnapshot([]*model.Service{svc}), Policies: map[string]*policyv1.ServicePolicy{"echo": pol}}
	res := Translate(in, Options{})
	var got []string
	for _, sk := range res.Skipped {
		if sk.Kind != SkipWarning {
			t.Errorf("left out: %+v", sk)
			continue
		}
		got = append(got, sk.Instance+": "+sk.Reason)
	}
	want := []string{
		`n/echo-0: meta trellis-zone-min-healthy-percent="lots" of instance "n/echo-0" ignored; accepted: an integer percentage from 0 to 100`,
		`n/echo-3: meta trellis-zone-min-healthy-percent="101" of instance "n/echo-3" ignored; accepted: an integer percentage from 0 to 100`,
		`n/echo-1: meta trellis-zone-min-healthy-percent=30 of instance "n/echo-1" overridden: another instance of the service sets 40, the highest wins`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("skips (-want +got):\n%s", diff)
	}
	// 40 %: zone a (1 of 3 healthy) spills, for the service and its subset.
	variants := (&ZoneSplitter{}).Split(in, res)
	for _, cname := range []string{"echo", SubsetClusterName("echo", "all")} {
		if _, ok := variants["a"][cname]; ok {
			t.Errorf("cluster %s: zone a has a variant at 33 %% healthy with threshold 40", cname)
		}
		if _, ok := variants["b"][cname]; !ok {
			t.Errorf("cluster %s: zone b has no variant", cname)
		}
	}
}

// TestZoneSplitterReuses checks that an unchanged cluster keeps its
// variant values, and a changed one gets new ones.
func TestZoneSplitterReuses(t *testing.T) {
	in := Input{Catalog: model.NewSnapshot([]*model.Service{zoned(0, 0)})}
	tr := NewTranslator(Options{})
	z := &ZoneSplitter{}
	firstA, firstB := z.Split(in, tr.Translate(in))["a"]["echo"], z.Split(in, tr.Translate(in))["b"]["echo"]
	second := z.Split(in, tr.Translate(in))
	if firstA == nil || firstA != second["a"]["echo"] || firstB != second["b"]["echo"] {
		t.Fatalf("unchanged input: variant %p then %p, want the same non-nil value", firstA, second["a"]["echo"])
	}
	in = Input{Catalog: model.NewSnapshot([]*model.Service{zoned(2, 0)})}
	third := z.Split(in, tr.Translate(in))
	if _, ok := third["a"]["echo"]; ok {
		t.Errorf("zone a below the threshold still has a variant")
	}
	if third["b"]["echo"] == nil || third["b"]["echo"] == firstB {
		t.Errorf("zone b: variant not recomputed after its service changed")
	}
	// The service leaves the catalog: its variants go.
	in = Input{Catalog: model.NewSnapshot(nil)}
	if got := z.Split(in, tr.Translate(in)); len(got) != 0 {
		t.Errorf("empty catalog: variants %v, want none", got)
	}
}

// BenchmarkZoneSplit measures, at 1,000 services spanning three zones
// each, the zone variants of an unchanged translation (the memo's cost,
// paid on every apply) and of a translation where every service changed,
// each against one memoised translation of the same unchanged input in the
// same run.
func BenchmarkZoneSplit(b *testing.B) {
	in := Input{Catalog: benchCatalog(1000)}
	tr := NewTranslator(Options{})
	res := tr.Translate(in)
	z := &ZoneSplitter{}
	z.Split(in, res)
	var translateTime, unchangedTime, changedTime time.Duration
	for b.Loop() {
		start := time.Now()
		tr.Translate(in)
		t1 := time.Now()
		z.Split(in, res)
		t2 := time.Now()
		(&ZoneSplitter{}).Split(in, res)
		translateTime += t1.Sub(start)
		unchangedTime += t2.Sub(t1)
		changedTime += time.Since(t2)
	}
	n := float64(b.N)
	b.ReportMetric(float64(unchangedTime.Nanoseconds())/n/1000, "ns/service-unchanged")
	b.ReportMetric(float64(changedTime.Nanoseconds())/n/1000, "ns/service-all-changed")
	b.ReportMetric(float64(unchangedTime)/float64(translateTime), "unchanged/memo-translate")
}
