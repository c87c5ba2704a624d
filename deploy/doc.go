// Package deploy holds the files that run Trellis outside a development
// machine: systemd units, a Nomad job, Kubernetes manifests, a Dockerfile, a
// compose file for a local mesh and a Grafana dashboard (see README.md in
// this directory). It has no Go code of its own; its tests check every file
// against what it configures: systemd-analyze for the units, HCL decoding
// against a schema of the Nomad job subset used, strict decoding against
// the Kubernetes API types, and the real trellis binary for every setting,
// flag and generated bootstrap the files contain.
package deploy
