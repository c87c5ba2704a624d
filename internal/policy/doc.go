// Package policy owns the rules for service policies (trellis.policy.v1):
// reading them from YAML or JSON documents, writing them back, putting them
// in canonical form, and validating them against what grpc-go's xDS client
// (v1.85) honours.
//
// Validation is the gate in front of translation: a policy that passes
// Validate translates into resources that no gRPC client NACKs and whose
// every setting a client acts on. Anything a client would reject or silently
// ignore is refused here, with the field path, what is wrong and what is
// accepted.
//
// The package is pure: no I/O other than reading the io.Reader handed to
// ParseDocuments, no clock, no logging, no mutable globals. It must not import
// Consul's API, the xDS translator, cache or server, or the policy store;
// what it needs to know about other services comes in through Env.
package policy
