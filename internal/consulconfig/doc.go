// Package consulconfig serves Consul's own traffic configuration
// (service-router, service-splitter, service-resolver and service-defaults
// config entries) as Trellis service policies, so that a Consul user's
// entries take effect for proxyless gRPC clients as they are.
//
// # What is read
//
// Consul's compiled discovery chain (GET /v1/discovery-chain/:service), not
// the entries one by one: Consul's compiler applies its own composition
// rules (redirects, default subsets, nested splits, protocol checks) and
// the result is exactly what Consul's Envoy would be configured with. The
// chain is decoded from the raw answer into this package's types, which
// hold every field Consul 1.16 writes, because consul/api's types leave
// some out and a field that is not decoded cannot be reported.
//
// # How it is watched
//
// A chain changes only when a config entry changes. The Watcher therefore
// runs one blocking query (consulwatch.Run, the project's one loop) per
// entry kind on the list endpoints (/v1/config/<kind>: service-router,
// service-splitter, service-resolver, service-defaults and proxy-defaults):
// five watches whatever the size of the catalog. A service has a chain worth
// reading when it has at least one entry; a catalog of 10,000 services
// without entries costs the five watches and no read. When a list changes,
// the chains read again are those of the services whose entries changed
// and those whose last chain names a changed service (in a node or a
// target); a proxy-defaults change (the default protocol) re-reads all.
// These are plain reads, not blocking queries: a blocking query per chain
// would hold one of the bounded client's connections per service with
// entries (consulwatch.NewClient; Consul refuses more than 200 per
// address), whereas the list watches already know when to read. A failed
// read is retried after RetryInterval; the chain is published once every
// list and chain was read.
//
// # How a chain becomes a policy
//
// Convert is pure: the routes of the chain's router become the policy's
// routes (path exact/prefix/regex as gRPC method matches, headers with all
// operators and invert, case-insensitivity), a splitter becomes a weighted
// split with Consul's 0.01 % steps kept as integers (weight x 100, so a
// 90/10 split is 9000/1000; the translator sets total_weight to their sum),
// resolvers become destinations (service and subset), the subsets every
// chain's targets use become the subsets of their service's policy (with
// the resolver's Filter, a go-bexpr expression evaluated in translation
// over the same fields Consul uses, and OnlyPassing), and the service's own
// resolver's LoadBalancer becomes the policy's load balancing.
//
// A resolver's Failover to the same service (and subset) in other
// datacenters becomes the policy's failover datacenters, in order (the
// catalog then reads those datacenters and translation puts their healthy
// instances at later EDS priorities). Trellis fails a service over as a
// whole, so the service's resolvers (one per subset the chain uses) must
// agree; failover to other services, subsets, peers, namespaces or
// partitions, failover policies and regions, and per-subset failovers that
// differ are reported, and only the datacenters are sent.
//
// What a chain expresses that gRPC clients cannot honour (query parameter
// matches, method lists without POST, prefix rewrites, header modifiers,
// idle timeouts, HTTP status code retries, non-gRPC retry conditions,
// cookie and source-IP hashing, maglev and random balancing, redirects to
// other datacenters, peers, namespaces and partitions) is not sent and is
// reported as an Unsupported naming the entry and its field. Where leaving
// a field out changes what matches, the whole route is left out (a query
// parameter route is skipped by gRPC clients as well); where Consul's own
// Envoy would ignore a field (CaseInsensitive with PathRegex, NumRetries
// without RetryOn), the chain is translated as Envoy acts on it and the
// field reported.
//
// PassiveHealthCheck and UpstreamConfig limits are not translated: they
// are set in the calling service's service-defaults (per caller and
// upstream), while a Trellis policy applies to every caller of its
// service, and PassiveHealthCheck counts consecutive errors, which gRPC's
// outlier detection (success rate and failure percentage only) cannot
// express. They are not in the chain: the service-defaults list watch reads
// them from the entries themselves and reports them, with the other fields
// that configure a sidecar (rate limits, Envoy extensions, inbound listener
// settings).
//
// # Precedence and validation
//
// Merge combines the converted chains with Trellis's own policies: a
// Trellis policy for a service replaces that service's chain whole (listed
// in Merged.Overridden, shown on /readyz). A chain's policy is checked with
// policy.Validate against the policies in effect for the services it
// routes to, like a stored policy; a route, subset or load balancer that
// validation refuses is left out and reported against its entry with the
// violation, so that what is sent is valid by construction, never NACKed,
// and nothing refused goes unreported.
//
// This package must not import the translator, the xDS cache or server, or
// the pipeline; it produces policies and knows nothing of xDS.
package consulconfig
