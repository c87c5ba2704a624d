package pemca

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestMutualTLSOverLoopback has a server and a client, each with a leaf
// from the same CA read back from its PEM files, complete a handshake over
// 127.0.0.1 that verifies both sides, and exchange a line.
func TestMutualTLSOverLoopback(t *testing.T) {
	dir := t.TempDir()
	ca, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ca.CertFile() != filepath.Join(dir, "ca.pem") {
		t.Errorf("CertFile %q, want %q", ca.CertFile(), filepath.Join(dir, "ca.pem"))
	}
	// The CA as a client of Consul reads it: from its file (CONSUL_CACERT).
	caPEM, err := os.ReadFile(ca.CertFile())
	if err != nil {
		t.Fatal(err)
	}
	if block, _ := pem.Decode(caPEM); block == nil || block.Type != "CERTIFICATE" || !ca.Cert().Equal(mustParse(t, block.Bytes)) {
		t.Fatalf("%s does not hold the CA certificate:\n%s", ca.CertFile(), caPEM)
	}
	filePool := x509.NewCertPool()
	if !filePool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s: no certificate", ca.CertFile())
	}

	serverCert, serverKey, err := ca.Issue("server.dc1.consul", 2)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, err := ca.Issue("client", 3)
	if err != nil {
		t.Fatal(err)
	}
	serverPair, err := tls.LoadX509KeyPair(serverCert, serverKey)
	if err != nil {
		t.Fatal(err)
	}
	clientPair, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}

	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverPair},
		ClientCAs:    ca.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	serverErr := make(chan error, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		tc := conn.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			serverErr <- err
			return
		}
		if peers := tc.ConnectionState().PeerCertificates; len(peers) == 0 || peers[0].Subject.CommonName != "client" {
			serverErr <- errors.New("no client certificate for \"client\"")
			return
		}
		_, err = io.WriteString(conn, "hello\n")
		serverErr <- err
	}()

	// No ServerName: the client verifies the server by its IP SAN, as a
	// client dialling https://127.0.0.1:PORT does.
	conn, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{clientPair},
		RootCAs:      filePool,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != "hello\n" {
		t.Errorf("read %q, want %q", got, "hello\n")
	}
	if err := <-serverErr; err != nil {
		t.Fatalf("server: %v", err)
	}

	leaf := conn.ConnectionState().PeerCertificates[0]
	for _, host := range []string{"server.dc1.consul", "localhost", "127.0.0.1", "::1"} {
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
}

// TestIssueRejectsBadNamesAndSerials checks that Issue refuses a name that
// is not a file name of its own, and a serial number that is not positive.
func TestIssueRejectsBadNamesAndSerials(t *testing.T) {
	ca, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", ".", "..", "a/b", "ca"} {
		if _, _, err := ca.Issue(name, 2); err == nil {
			t.Errorf("Issue(%q) succeeded, want an error", name)
		}
	}
	if _, _, err := ca.Issue("server", 0); err == nil {
		t.Error("Issue with serial 0 succeeded, want an error")
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
