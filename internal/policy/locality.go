package policy

import (
	"regexp"

	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// Bounds of the failover and locality fields.
const (
	maxFailoverDatacenters   = 8
	maxDatacenterNameLength  = 64
	DefaultMinHealthyPercent = 50
)

// datacenterPattern is Consul's rule for datacenter names, which Consul
// lower-cases (instances report their datacenter in lower case, so an
// upper-case name would never match one).
var datacenterPattern = regexp.MustCompile(`^[a-z0-9_-]+$`)

// failover checks the failover datacenters: each a Consul datacenter name,
// listed once, at most maxFailoverDatacenters of them (each is one more
// blocking read of another datacenter's catalog). Whether a name is the
// local datacenter, or a datacenter Consul knows, is not known here: the
// catalog ignores the local one and reports unknown ones.
func (v *validator) failover(f string, fo *policyv1.Failover) {
	dcs := fo.GetDatacenters()
	f = field(f, "datacenters")
	switch {
	case len(dcs) == 0:
		v.errorf(f, "empty: list 1 to %d Consul datacenters to fail over to, in order (or leave failover unset)", maxFailoverDatacenters)
		return
	case len(dcs) > maxFailoverDatacenters:
		v.errorf(f, "%d datacenters: list at most %d", len(dcs), maxFailoverDatacenters)
	}
	seen := map[string]int{}
	for i, dc := range dcs {
		fi := index(f, i)
		switch {
		case dc == "":
			v.errorf(fi, "empty: a Consul datacenter name is required")
		case len(dc) > maxDatacenterNameLength || !datacenterPattern.MatchString(dc):
			v.errorf(fi, "%q is not a Consul datacenter name: use lower-case letters, digits, '-' and '_', at most %d characters (Consul lower-cases datacenter names)", dc, maxDatacenterNameLength)
		default:
			if j, dup := seen[dc]; dup {
				v.errorf(fi, "%q is already listed at datacenters[%d]: list each datacenter once", dc, j)
				continue
			}
			seen[dc] = i
		}
	}
}

// locality checks the zone preference settings.
func (v *validator) locality(f string, l *policyv1.Locality) {
	if l.MinHealthyPercent != nil && *l.MinHealthyPercent > 100 {
		v.errorf(field(f, "min_healthy_percent"), "%d is not a percentage: use 0 to 100 (unset: %d)", *l.MinHealthyPercent, DefaultMinHealthyPercent)
	}
}
