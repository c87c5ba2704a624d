package pipeline

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/xdsserver/translate"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// ZoneCache takes the per-zone variants of the load assignments (see
// translate.ZoneSplitter): the shared assignments by cluster name, and by
// zone the variants that replace some of them. xdsserver.ZoneCaches
// implements it.
type ZoneCache interface {
	Apply(base map[string]types.Resource, variants map[string]map[string]types.Resource) map[string]xdscache.ApplyResult
}

// applyZones computes the zone variants of res, the first profile's
// translation of in, and applies them with its assignments to
// Config.Zones. Assignments do not differ between profiles, so the first
// profile's serve every client. It runs before the profile caches are
// applied, so that a zone's clients have their assignments when the
// clusters naming them arrive.
func (p *Pipeline) applyZones(in translate.Input, res *translate.Result) {
	if p.cfg.Zones == nil || res == nil {
		return
	}
	base := res.Resources.ByTypeURL()[resource.EndpointType]
	for zone, r := range p.cfg.Zones.Apply(base, p.zones.Split(in, res)) {
		if r.Err != nil {
			p.metrics.applyErrors.Inc()
			p.logger.Error("the zone cache refused load assignments; they keep their previous version", "zone", zone, "error", r.Err)
		}
	}
}
