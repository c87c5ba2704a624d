package identity_test

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/identity"
)

func ExampleScheme_ID() {
	td := spiffeid.RequireTrustDomainFromString("trellis.test")
	id, err := identity.DefaultScheme().ID(identity.Workload{TrustDomain: td, Datacenter: "dc1", Service: "echo"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(id)

	w, err := identity.DefaultScheme().Parse(id)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(w.Namespace, w.Datacenter, w.Service)
	// Output:
	// spiffe://trellis.test/ns/default/dc/dc1/svc/echo
	// default dc1 echo
}

func ExampleNewScheme() {
	s, err := identity.NewScheme("/mesh/{datacenter}/{service}")
	if err != nil {
		fmt.Println(err)
		return
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	id, err := s.ID(identity.Workload{TrustDomain: td, Datacenter: "eu1", Service: "api"})
	fmt.Println(id, err)

	_, err = identity.NewScheme("/svc-{service}")
	fmt.Println(err != nil)
	// Output:
	// spiffe://example.org/mesh/eu1/api <nil>
	// true
}

func ExampleProviderFragment() {
	frag, err := identity.ProviderFragment(identity.ProviderConfig{WorkloadAPIAddr: "unix:///run/spire/agent.sock"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(frag))
	// Output:
	// {"plugin_name":"trellis_spiffe","config":{"workload_api_addr":"unix:///run/spire/agent.sock"}}
}

func ExampleFileWatcherProvider() {
	frag, err := identity.FileWatcherProvider("/run/trellis/identity", 30*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(frag))
	// Output:
	// {"plugin_name":"file_watcher","config":{"certificate_file":"/run/trellis/identity/cert.pem","private_key_file":"/run/trellis/identity/key.pem","ca_certificate_file":"/run/trellis/identity/ca.pem","spiffe_trust_bundle_map_file":"/run/trellis/identity/spiffe_bundle_map.json","refresh_interval":"30s"}}
}
