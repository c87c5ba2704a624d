// Package integration holds the end-to-end tests of Trellis: a real Consul
// agent built from the pinned release, the real trellis binary, and real
// grpc-go xDS clients and servers, all on loopback.
//
// Every test asserts from the control plane's own per-stream tracking that
// clients ACKed every version they were sent and NACKed nothing.
package integration
