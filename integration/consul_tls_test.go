package integration

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/pemca"
)

// consulTLS is what a Consul agent serving HTTPS and its clients need: a
// test CA, a server certificate for the agent and a client certificate
// for Trellis, as PEM files.
type consulTLS struct {
	ca                    *pemca.CA
	serverCert, serverKey string
	clientCert, clientKey string
}

func newConsulTLS(t *testing.T) consulTLS {
	t.Helper()
	ca, err := pemca.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := consulTLS{ca: ca}
	if c.serverCert, c.serverKey, err = ca.Issue("server.dc1.consul", 2); err != nil {
		t.Fatal(err)
	}
	if c.clientCert, c.clientKey, err = ca.Issue("trellis", 3); err != nil {
		t.Fatal(err)
	}
	return c
}

// agentHCL is the agent's tls stanza: its HTTPS API serves the server
// certificate and requires client certificates from the CA.
func (c consulTLS) agentHCL() string { return c.agentTLSHCL(true) }

// agentTLSHCL is the agent's tls stanza, requiring client certificates
// on HTTPS or not.
func (c consulTLS) agentTLSHCL(verifyIncoming bool) string {
	return fmt.Sprintf(`tls { defaults { ca_file = %q cert_file = %q key_file = %q } https { verify_incoming = %t } }`,
		c.ca.CertFile(), c.serverCert, c.serverKey, verifyIncoming)
}

// setClientEnv configures the Consul clients the test starts as Consul's
// own tools are: CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT and
// CONSUL_CLIENT_KEY.
func (c consulTLS) setClientEnv(t *testing.T) {
	t.Helper()
	t.Setenv("CONSUL_HTTP_SSL", "true")
	t.Setenv("CONSUL_CACERT", c.ca.CertFile())
	t.Setenv("CONSUL_CLIENT_CERT", c.clientCert)
	t.Setenv("CONSUL_CLIENT_KEY", c.clientKey)
}

// TestConsulOverHTTPS runs `trellis server` against Consul's HTTPS API
// only, configured as Consul's own tools are (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY),
// with Consul requiring client certificates on HTTPS: the server syncs,
// serves a real grpc-go xDS client, follows a change, and registers its
// replica through it. A client without a certificate is refused, so the
// test would fail if Trellis did not present its own.
func TestConsulOverHTTPS(t *testing.T) {
	certs := newConsulTLS(t)
	consul := consultest.Start(t, consultest.Options{HTTPS: true, HCL: []string{certs.agentHCL()}})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})

	// Consul refuses an HTTPS client without a certificate.
	bare := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: certs.ca.Pool()}}}
	if resp, err := bare.Get("https://" + consul.HTTPSAddr() + "/v1/catalog/services"); err == nil {
		resp.Body.Close()
		t.Fatalf("Consul's HTTPS API answered a client without a certificate: %s", resp.Status)
	}

	certs.setClientEnv(t)
	trellis := startTrellis(t, consul.HTTPSAddr())
	code, body, err := trellis.get("/readyz")
	if err != nil || code != http.StatusOK || !strings.Contains(body, "consul reachable: true") {
		t.Fatalf("/readyz %d %v:\n%s", code, err, body)
	}
	conn := dialXDS(t, trellis.bootstrapFor(t, "https-client"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1")
	startBackend(t, consul, "echo", "echo-2", backendOptions{})
	waitForInstances(t, conn, 20*time.Second, "echo-1", "echo-2")
	waitFor(t, 20*time.Second, "the replica registered through HTTPS", func() error {
		services, err := consul.Client(t).Agent().Services()
		if err != nil {
			return err
		}
		if _, ok := services["trellis-xds-"+trellis.xdsAddr]; !ok {
			return fmt.Errorf("no trellis-xds-%s among %d services", trellis.xdsAddr, len(services))
		}
		return nil
	})
	trellis.requireAllACKed(t)
}
