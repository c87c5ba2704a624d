package consultest

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// ServiceTTL is the TTL of the checks RegisterService attaches: long enough
// that a check never expires during a test unless the test wants it to.
const ServiceTTL = time.Hour

// requestTimeout bounds every request the helpers make.
const requestTimeout = 10 * time.Second

// TTLCheckID returns the ID of the TTL check that RegisterService attaches to
// the service instance with the given ID.
func TTLCheckID(serviceID string) string { return "service:" + serviceID }

// RegisterService registers reg on the agent with one TTL check (TTL
// ServiceTTL) that starts passing, and returns the check's ID
// (TTLCheckID(reg.ID)). reg.ID defaults to reg.Name; reg.Check and
// reg.Checks must be unset. The registration reaches the catalog shortly
// after the call returns (the agent syncs it).
func (a *Agent) RegisterService(t testing.TB, reg *api.AgentServiceRegistration) string {
	t.Helper()
	if reg.Check != nil || len(reg.Checks) > 0 {
		t.Fatalf("consultest: RegisterService %q: reg.Check and reg.Checks must be unset; a TTL check is added", reg.Name)
	}
	r := *reg
	if r.ID == "" {
		r.ID = r.Name
	}
	checkID := TTLCheckID(r.ID)
	r.Check = &api.AgentServiceCheck{
		CheckID: checkID,
		Name:    "ttl " + r.ID,
		TTL:     ServiceTTL.String(),
		Status:  api.HealthPassing,
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	err := a.client(t).Agent().ServiceRegisterOpts(&r, api.ServiceRegisterOpts{}.WithContext(ctx))
	if err != nil {
		t.Fatalf("consultest: register service %q: %v", r.ID, err)
	}
	return checkID
}

// SetTTL sets the status of a TTL check: api.HealthPassing, api.HealthWarning
// or api.HealthCritical.
func (a *Agent) SetTTL(t testing.TB, checkID, status string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	if err := a.client(t).Agent().UpdateTTLOpts(checkID, "set by test to "+status, status, q); err != nil {
		t.Fatalf("consultest: set check %q to %s: %v", checkID, status, err)
	}
}

// DeregisterService removes a service instance (and its checks) from the
// agent.
func (a *Agent) DeregisterService(t testing.TB, serviceID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	if err := a.client(t).Agent().ServiceDeregisterOpts(serviceID, q); err != nil {
		t.Fatalf("consultest: deregister service %q: %v", serviceID, err)
	}
}

// CatalogCheckStatus returns the status of a check of this agent's node as
// the catalog holds it, or "" when the catalog has no such check.
func (a *Agent) CatalogCheckStatus(t testing.TB, checkID string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	checks, _, err := a.client(t).Health().Node(a.opts.NodeName, q)
	if err != nil {
		t.Fatalf("consultest: checks of node %q: %v", a.opts.NodeName, err)
	}
	for _, c := range checks {
		if c.CheckID == checkID {
			return c.Status
		}
	}
	return ""
}

// WaitFor polls cond every 100 ms until it returns nil, failing the test
// with cond's last error after timeout.
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consultest: still not true after %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// client returns the agent's shared API client.
func (a *Agent) client(t testing.TB) *api.Client {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.shared == nil {
		c, err := a.newClient()
		if err != nil {
			t.Fatalf("consultest: %v", err)
		}
		a.shared = c
	}
	return a.shared
}
