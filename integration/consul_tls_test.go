package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// pemCA is a test certificate authority writing PEM files.
type pemCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newPEMCA(t *testing.T) *pemCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "trellis test CA"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &pemCA{cert: cert, key: key, dir: t.TempDir()}
	ca.write(t, "ca.pem", "CERTIFICATE", der)
	return ca
}

func (ca *pemCA) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue writes a certificate and key for name, for servers (with the
// 127.0.0.1 and localhost SANs) and clients, and returns their paths.
func (ca *pemCA) issue(t *testing.T, name string, serial int64) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return ca.write(t, name+".pem", "CERTIFICATE", der), ca.write(t, name+"-key.pem", "EC PRIVATE KEY", keyDER)
}

// TestConsulOverHTTPS runs `trellis server` against Consul's HTTPS API
// only, configured as Consul's own tools are (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY),
// with Consul requiring client certificates on HTTPS: the server syncs,
// serves a real grpc-go xDS client, follows a change, and registers its
// replica through it. A client without a certificate is refused, so the
// test would fail if Trellis did not present its own.
func TestConsulOverHTTPS(t *testing.T) {
	ca := newPEMCA(t)
	serverCert, serverKey := ca.issue(t, "server.dc1.consul", 2)
	clientCert, clientKey := ca.issue(t, "trellis", 3)
	caPath := filepath.Join(ca.dir, "ca.pem")
	consul := consultest.Start(t, consultest.Options{HTTPS: true, HCL: []string{fmt.Sprintf(
		`tls { defaults { ca_file = %q cert_file = %q key_file = %q } https { verify_incoming = true } }`,
		caPath, serverCert, serverKey)}})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})

	// Consul refuses an HTTPS client without a certificate.
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	bare := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if resp, err := bare.Get("https://" + consul.HTTPSAddr() + "/v1/catalog/services"); err == nil {
		resp.Body.Close()
		t.Fatalf("Consul's HTTPS API answered a client without a certificate: %s", resp.Status)
	}

	t.Setenv("CONSUL_HTTP_SSL", "true")
	t.Setenv("CONSUL_CACERT", caPath)
	t.Setenv("CONSUL_CLIENT_CERT", clientCert)
	t.Setenv("CONSUL_CLIENT_KEY", clientKey)
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
