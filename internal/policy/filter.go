package policy

import (
	"fmt"

	"github.com/hashicorp/go-bexpr"

	"github.com/trellis-mesh/trellis/internal/model"
)

// maxFilterLength bounds a subset filter expression.
const maxFilterLength = 4096

// Subset filters are Consul filter expressions (github.com/hashicorp/go-bexpr,
// the version Consul 1.16 evaluates resolver subsets with) over an instance
// shaped like an entry of Consul's health API (structs.CheckServiceNode), so
// that a service-resolver's subset Filter selects the same instances here as
// in Consul. FilterInstance holds the fields Trellis's catalog reads; an
// expression naming another selector (Checks, Service.Connect, ...) is refused
// with the list of accepted ones, rather than evaluated against nothing.

// FilterInstance is what a subset filter is evaluated over.
type FilterInstance struct {
	Node    *FilterNode
	Service *FilterService
}

// FilterNode is the Node part of a FilterInstance.
type FilterNode struct {
	Node       string
	Address    string
	Datacenter string
	Meta       map[string]string
}

// FilterService is the Service part of a FilterInstance.
type FilterService struct {
	ID      string
	Service string
	Tags    []string
	Address string
	Port    int
	Meta    map[string]string
}

// filterSelectors lists the selectors FilterInstance offers, for errors.
const filterSelectors = "Service.ID, Service.Service, Service.Tags, Service.Address, Service.Port, Service.Meta, Service.Meta.<key>, Node.Node, Node.Address, Node.Datacenter, Node.Meta, Node.Meta.<key>"

// Filter is a compiled subset filter. It is not safe for concurrent use
// (go-bexpr memoises coerced values in the expression): compile one per
// goroutine.
type Filter struct {
	eval *bexpr.Evaluator
}

// CompileFilter parses and checks a subset filter expression against the
// fields of FilterInstance.
func CompileFilter(expr string) (*Filter, error) {
	if len(expr) > maxFilterLength {
		return nil, fmt.Errorf("filter is %d bytes long: use at most %d", len(expr), maxFilterLength)
	}
	eval, err := bexpr.CreateEvaluatorForType(expr, nil, (*FilterInstance)(nil))
	if err != nil {
		return nil, fmt.Errorf("not a filter expression Consul accepts over %s: %v", filterSelectors, err)
	}
	return &Filter{eval: eval}, nil
}

// Match reports whether the instance of service matches the filter. An
// evaluation error (which a checked expression cannot produce on these
// types) counts as no match: an instance is never put in a subset it was
// not shown to belong to.
func (f *Filter) Match(service string, inst model.Instance) bool {
	ok, err := f.eval.Evaluate(FilterInstanceOf(service, inst))
	return err == nil && ok
}

// FilterInstanceOf shows an instance of service as a filter sees it.
func FilterInstanceOf(service string, inst model.Instance) *FilterInstance {
	tags := inst.Tags
	if tags == nil {
		tags = []string{}
	}
	meta := inst.Meta
	if meta == nil {
		meta = map[string]string{}
	}
	nodeMeta := inst.NodeMeta
	if nodeMeta == nil {
		nodeMeta = map[string]string{}
	}
	return &FilterInstance{
		Node: &FilterNode{Node: inst.Node, Address: inst.NodeAddress, Datacenter: inst.Datacenter, Meta: nodeMeta},
		Service: &FilterService{ID: inst.ID, Service: service, Tags: tags, Address: inst.ServiceAddress,
			Port: inst.Port, Meta: meta},
	}
}
