// Package dataplane measures what Trellis costs on the data path: the same
// small gRPC service called directly and through xds:/// channels served by a
// real `trellis server` fed by a real Consul agent, in plaintext and with
// mTLS from SPIFFE SVIDs issued by a real SPIRE server and agent.
//
// It owns the benchmark harness (Run), the worker processes it starts (the
// echo server and the load-generating client, entered through WorkerMain so
// that client and server CPU and memory are measured per process), the
// latency histogram, and the summary of a run (medians across rounds, their
// spread, and ratios paired within each round). It does not render reports:
// cmd/trellis-bench turns a Report into BENCHMARKS.md and plots.
//
// It may import the identity, bootstrap, clients and policy packages to
// configure the mesh exactly as an operator would, and must not import the
// test helpers under internal/testutil, nor anything under cmd/.
package dataplane
