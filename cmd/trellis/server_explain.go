package main

import (
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/pipeline"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// explainInputs hands the status API's Explain what the server translates,
// read-only and in the status API's own terms: the latest catalog, policy
// and intentions snapshots, the security flags, and the last translation's
// skips.
type explainInputs struct {
	catalog  *catalog.Watcher
	policies *store.Watcher
	security *securityServer
	pipe     *pipeline.Pipeline
}

var _ statusapi.Inputs = explainInputs{}

func (in explainInputs) Catalog() *model.Snapshot { return in.catalog.Latest() }

func (in explainInputs) Policy(service string) (*policyv1.ServicePolicy, uint64) {
	snap := in.policies.Latest()
	if snap == nil {
		return nil, 0
	}
	p := snap.Policies[service]
	if p == nil {
		return nil, 0
	}
	return p, snap.Revisions[service]
}

func (in explainInputs) Security() statusapi.Security {
	base := in.security.base
	return statusapi.Security{
		TrustDomain: base.TrustDomain.Name(),
		MTLS:        base.MTLS,
		DefaultDeny: base.DefaultDeny,
		Intentions:  in.security.watcher.Latest(),
	}
}

func (in explainInputs) Skips() []statusapi.Skip {
	skipped := in.pipe.Status().Skipped
	out := make([]statusapi.Skip, len(skipped))
	for i, s := range skipped {
		out[i] = statusapi.Skip{Warning: s.Kind == translate.SkipWarning, Service: s.Service, Instance: s.Instance,
			Route: s.Route, Profile: s.Profile, Reason: s.Reason}
	}
	return out
}

func (in explainInputs) Synced() bool { return in.pipe.Ready() }
