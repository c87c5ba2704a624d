// Package identity owns SPIFFE for Trellis workloads: the scheme that maps a
// service to its SPIFFE ID, the Workload API address and the conversion of
// X.509 SVIDs and trust bundles into the forms gRPC consumes, and the
// certificate_providers and channel_creds fragments of the gRPC xDS
// bootstrap.
//
// Subpackages turn SVIDs into credentials:
//   - identity/certprovider is the in-process gRPC certificate provider
//     plugin "trellis_spiffe", fed by the SPIFFE Workload API, and the xDS
//     bootstrap channel credentials "trellis_spiffe" (mTLS to the xDS
//     server);
//   - identity/filesync keeps PEM files and a SPIFFE trust bundle map on
//     disk for gRPC's stock file_watcher plugin and "tls" channel
//     credentials;
//   - identity/spiffetls builds mTLS transport credentials that verify and
//     authorize peers by SPIFFE ID, and reads a gRPC peer's SPIFFE ID.
//
// Package identity must not import the catalog, the model, the xDS server or
// internal/bootstrap: it returns bootstrap fragments as opaque JSON.
package identity
