package main

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/hashicorp/consul/api"
)

// registration is this instance's entry in the local Consul agent.
type registration struct {
	agent *api.Agent
	svc   *api.AgentServiceRegistration
}

// newRegistration prepares the agent registration of the instance at
// advertise (an IP:port), with a gRPC health check against the standard
// health service.
func newRegistration(cfg config, advertise, checkAddr string) (*registration, error) {
	consulCfg := api.DefaultConfig() // CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...
	if cfg.ConsulAddr != "" {
		consulCfg.Address = cfg.ConsulAddr
	}
	client, err := api.NewClient(consulCfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	host, portStr, err := net.SplitHostPort(advertise)
	if err != nil {
		return nil, fmt.Errorf("advertise address %q: %w", advertise, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("advertise address %q: %w", advertise, err)
	}
	meta := map[string]string{}
	for k, v := range cfg.Meta {
		meta[k] = v
	}
	if cfg.Zone != "" {
		meta["zone"] = cfg.Zone
	}
	return &registration{
		agent: client.Agent(),
		svc: &api.AgentServiceRegistration{
			ID:      cfg.InstanceID,
			Name:    cfg.Service,
			Address: host,
			Port:    port,
			Meta:    meta,
			Check: &api.AgentServiceCheck{
				Name: "gRPC health " + checkAddr,
				// Consul calls grpc.health.v1.Health/Check for the
				// overall ("") status at this address.
				GRPC:                           checkAddr,
				Interval:                       cfg.CheckInterval.String(),
				Timeout:                        cfg.CheckInterval.String(),
				DeregisterCriticalServiceAfter: "1m",
			},
		},
	}, nil
}

// register adds (or replaces) the instance and its check in the agent.
func (r *registration) register(ctx context.Context) error {
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := r.agent.ServiceRegisterOpts(r.svc, opts); err != nil {
		return fmt.Errorf("consul: register service %q (id %q): %w", r.svc.Name, r.svc.ID, err)
	}
	return nil
}

// deregister removes the instance from the agent, and so from the catalog.
func (r *registration) deregister(ctx context.Context) error {
	if err := r.agent.ServiceDeregisterOpts(r.svc.ID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: deregister service id %q: %w", r.svc.ID, err)
	}
	return nil
}
