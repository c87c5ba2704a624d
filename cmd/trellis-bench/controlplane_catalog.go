package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"
)

// The generated catalog: services svc-00000... with instances on external
// nodes (registered through the catalog, so the agent's anti-entropy leaves
// them alone), instancesPerNode on each, each instance with one check whose
// status the benchmark flips.
const (
	// instancesPerNode is how many instances share a node, as on hosts
	// running a few workloads each. Consul's cost per write grows with the
	// services of the node written to.
	instancesPerNode = 10
	// txnOps is how many operations one /v1/txn request carries.
	txnOps = 64
	// writeWorkers is how many transactions are in flight while the
	// catalog is generated.
	writeWorkers = 8
)

func serviceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// serviceIndex is the inverse of serviceName (-1 for other names).
func serviceIndex(name string) int {
	var i int
	if _, err := fmt.Sscanf(name, "svc-%05d", &i); err != nil {
		return -1
	}
	return i
}
func nodeName(i int) string { return fmt.Sprintf("node-%05d", i) }
func nodeAddr(i int) string { return fmt.Sprintf("10.%d.%d.%d", 1+i/62500, i/250%250, i%250+1) }

// instance is one generated service instance.
type instance struct {
	node    int
	id      string
	port    int
	passing bool
}

func (in instance) checkID() string { return "check:" + in.id }

// catalogState is what the benchmark wrote, so that each change it makes
// is a real change (a passing check goes critical, a new instance is new).
type catalogState struct {
	client *consulapi.Client
	nodes  int
	mu     sync.Mutex
	svcs   [][]instance
	// extra counts the instances registered by changes, for unique IDs
	// and ports.
	extra int
}

func (c *catalogState) txn(ctx context.Context, ops consulapi.TxnOps) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ok, resp, _, err := c.client.Txn().Txn(ops, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("consul txn: %w", err)
	}
	if !ok {
		return fmt.Errorf("consul txn rolled back: %v", resp.Errors)
	}
	return nil
}

func serviceOps(svc string, in instance) consulapi.TxnOps {
	return consulapi.TxnOps{
		{Service: &consulapi.ServiceTxnOp{Verb: consulapi.ServiceSet, Node: nodeName(in.node), Service: consulapi.AgentService{
			ID: in.id, Service: svc, Address: nodeAddr(in.node), Port: in.port,
		}}},
		checkOp(svc, in),
	}
}

func checkOp(svc string, in instance) *consulapi.TxnOp {
	status := consulapi.HealthPassing
	if !in.passing {
		status = consulapi.HealthCritical
	}
	return &consulapi.TxnOp{Check: &consulapi.CheckTxnOp{Verb: consulapi.CheckSet, Check: consulapi.HealthCheck{
		Node: nodeName(in.node), CheckID: in.checkID(), Name: "bench check", Status: status,
		ServiceID: in.id, ServiceName: svc,
	}}}
}

// generateCatalog registers services x perService instances through
// /v1/txn, txnOps operations per transaction, writeWorkers at a time.
func generateCatalog(ctx context.Context, client *consulapi.Client, services, perService int) (*catalogState, error) {
	nodes := max(perService, services*perService/instancesPerNode)
	c := &catalogState{client: client, svcs: make([][]instance, services), nodes: nodes}
	var batches []consulapi.TxnOps
	var cur consulapi.TxnOps
	flush := func() {
		if len(cur) > 0 {
			batches = append(batches, cur)
			cur = nil
		}
	}
	for n := range nodes {
		cur = append(cur, &consulapi.TxnOp{Node: &consulapi.NodeTxnOp{Verb: consulapi.NodeSet, Node: consulapi.Node{Node: nodeName(n), Address: nodeAddr(n)}}})
		if len(cur) == txnOps {
			flush()
		}
	}
	flush()
	nodeBatches := len(batches)
	for i := range services {
		svc := serviceName(i)
		for j := range perService {
			// Instances of one service sit on distinct nodes, so their
			// addresses differ.
			in := instance{node: (i*perService + j) % nodes, id: fmt.Sprintf("%s-%d", svc, j), port: 8080, passing: true}
			c.svcs[i] = append(c.svcs[i], in)
			if len(cur)+2 > txnOps {
				flush()
			}
			cur = append(cur, serviceOps(svc, in)...)
		}
	}
	flush()
	// Nodes first: a service needs its node.
	for _, b := range batches[:nodeBatches] {
		if err := c.txn(ctx, b); err != nil {
			return nil, fmt.Errorf("register nodes: %w", err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(writeWorkers)
	for _, b := range batches[nodeBatches:] {
		g.Go(func() error { return c.txn(gctx, b) })
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("register services: %w", err)
	}
	return c, nil
}

// change is one write to the catalog.
type change struct {
	service int
	kind    string // "register", "critical" or "passing"
}

// registerInstance adds a new passing instance to service i.
func (c *catalogState) registerInstance(ctx context.Context, i int) (change, error) {
	c.mu.Lock()
	c.extra++
	n := c.extra
	svc := serviceName(i)
	in := instance{node: n % c.nodes, id: fmt.Sprintf("%s-x%d", svc, n), port: 9000 + n%50000, passing: true}
	c.svcs[i] = append(c.svcs[i], in)
	c.mu.Unlock()
	return change{service: i, kind: "register"}, c.txn(ctx, serviceOps(svc, in))
}

// failCheck turns the first passing check of service i critical; when
// none is passing, it turns the first one passing again.
func (c *catalogState) failCheck(ctx context.Context, i int) (change, error) {
	c.mu.Lock()
	k := 0
	for k < len(c.svcs[i]) && !c.svcs[i][k].passing {
		k++
	}
	if k == len(c.svcs[i]) {
		k = 0
	}
	c.svcs[i][k].passing = !c.svcs[i][k].passing
	in := c.svcs[i][k]
	c.mu.Unlock()
	kind := "critical"
	if in.passing {
		kind = "passing"
	}
	return change{service: i, kind: kind}, c.txn(ctx, consulapi.TxnOps{checkOp(serviceName(i), in)})
}

// toggleCheck flips the check of instance n % instances of service i, for
// churn that keeps about half the flipped instances passing.
func (c *catalogState) toggleCheck(ctx context.Context, i, n int) (change, error) {
	c.mu.Lock()
	k := n % len(c.svcs[i])
	c.svcs[i][k].passing = !c.svcs[i][k].passing
	in := c.svcs[i][k]
	c.mu.Unlock()
	kind := "critical"
	if in.passing {
		kind = "passing"
	}
	return change{service: i, kind: kind}, c.txn(ctx, consulapi.TxnOps{checkOp(serviceName(i), in)})
}
