package consulconfig

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// The types below are Consul 1.16's compiled discovery chain as
// /v1/discovery-chain/:service returns it (agent/structs/discovery_chain.go
// and config_entry_discoverychain.go), with every field the conversion
// either translates or reports. consul/api's own types leave some of them
// out (a resolver's RequestTimeout, a split's Definition with its header
// modifiers, peers, locality), and a field that is not decoded cannot be
// reported: these types are decoded from the raw answer instead.

// chainResponse is the body of GET /v1/discovery-chain/:service.
type chainResponse struct {
	Chain *Chain
}

// Chain is a compiled discovery chain.
type Chain struct {
	ServiceName string
	Namespace   string
	Partition   string
	Datacenter  string
	// Default is true when no config entry shapes the chain.
	Default   bool
	Protocol  string
	StartNode string
	Nodes     map[string]*Node
	Targets   map[string]*Target
}

// Node types of a chain.
const (
	nodeRouter   = "router"
	nodeSplitter = "splitter"
	nodeResolver = "resolver"
)

// Node is a router, splitter or resolver of a chain.
type Node struct {
	Type         string
	Name         string
	Routes       []*Route
	Splits       []*Split
	Resolver     *Resolver
	LoadBalancer *LoadBalancer
}

// Route is one route of a router node.
type Route struct {
	Definition *ServiceRoute
	NextNode   string
}

// ServiceRoute is a service-router entry's route.
type ServiceRoute struct {
	Match       *RouteMatch
	Destination *RouteDestination
}

// RouteMatch holds a route's HTTP match.
type RouteMatch struct {
	HTTP *HTTPMatch
}

// HTTPMatch is the match of a service-router route.
type HTTPMatch struct {
	PathExact       string
	PathPrefix      string
	PathRegex       string
	CaseInsensitive bool
	Header          []HeaderMatch
	QueryParam      []QueryParamMatch
	Methods         []string
}

// HeaderMatch matches one request header.
type HeaderMatch struct {
	Name    string
	Present bool
	Exact   string
	Prefix  string
	Suffix  string
	Regex   string
	Invert  bool
}

// QueryParamMatch matches one query parameter.
type QueryParamMatch struct {
	Name    string
	Present bool
	Exact   string
	Regex   string
}

// RouteDestination is where a service-router route sends calls.
type RouteDestination struct {
	Service               string
	ServiceSubset         string
	Namespace             string
	Partition             string
	PrefixRewrite         string
	RequestTimeout        Duration
	IdleTimeout           Duration
	NumRetries            uint32
	RetryOnConnectFailure bool
	RetryOn               []string
	RetryOnStatusCodes    []uint32
	RequestHeaders        *HeaderModifiers
	ResponseHeaders       *HeaderModifiers
}

// HeaderModifiers add, set or remove headers.
type HeaderModifiers struct {
	Add    map[string]string
	Set    map[string]string
	Remove []string
}

func (m *HeaderModifiers) empty() bool {
	return m == nil || len(m.Add) == 0 && len(m.Set) == 0 && len(m.Remove) == 0
}

// Split is one leg of a splitter node.
type Split struct {
	Definition *ServiceSplit
	Weight     float64
	NextNode   string
}

// ServiceSplit is a service-splitter entry's split.
type ServiceSplit struct {
	Weight          float64
	Service         string
	ServiceSubset   string
	Namespace       string
	Partition       string
	RequestHeaders  *HeaderModifiers
	ResponseHeaders *HeaderModifiers
}

// Resolver is the resolver of a resolver node.
type Resolver struct {
	Default        bool
	ConnectTimeout Duration
	RequestTimeout Duration
	Target         string
	Failover       *Failover
}

// Failover lists a resolver's failover targets.
type Failover struct {
	Targets []string
	Policy  *json.RawMessage
	Regions []string
}

// LoadBalancer is a service-resolver's load balancer.
type LoadBalancer struct {
	Policy             string
	RingHashConfig     *RingHashConfig
	LeastRequestConfig *LeastRequestConfig
	HashPolicies       []HashPolicy
}

// RingHashConfig bounds the ring.
type RingHashConfig struct {
	MinimumRingSize uint64
	MaximumRingSize uint64
}

// LeastRequestConfig sets the choice count.
type LeastRequestConfig struct {
	ChoiceCount uint32
}

// HashPolicy is one hash policy of a ring hash or maglev balancer.
type HashPolicy struct {
	Field        string
	FieldValue   string
	CookieConfig *json.RawMessage
	SourceIP     bool
	Terminal     bool
}

// Target is one resolved destination of a chain.
type Target struct {
	ID            string
	Service       string
	ServiceSubset string
	Namespace     string
	Partition     string
	Datacenter    string
	Peer          string
	Subset        TargetSubset
	External      bool
}

// TargetSubset is a resolver subset's definition.
type TargetSubset struct {
	Filter      string
	OnlyPassing bool
}

// Duration reads Consul's durations, which the discovery chain endpoint
// writes as Go duration strings ("5s") in some places and as integer
// nanoseconds in others (a resolver's RequestTimeout).
type Duration time.Duration

// UnmarshalJSON accepts a duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if s == "" {
			*d = 0
			return nil
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("duration %s: not a string or a number of nanoseconds", b)
	}
	*d = Duration(n)
	return nil
}

// MarshalJSON writes a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}
