// Package pemca is a small certificate authority for tests and benchmarks
// that run TLS servers and clients on loopback addresses, Consul's HTTPS
// API among them. It writes its certificate and the leaves it issues as PEM
// files, the form Consul's tls stanza and CONSUL_CACERT, CONSUL_CLIENT_CERT
// and CONSUL_CLIENT_KEY take. It imports neither testing nor any other
// Trellis package, so commands may use it as well as tests.
package pemca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Validity is how long the CA and its leaves stay valid after they are
// made; they are valid from a minute before, for clocks a little apart.
const Validity = 24 * time.Hour

// caFileName is the name of the CA certificate's file in the CA's
// directory.
const caFileName = "ca.pem"

// CA is a self-signed ECDSA P-256 certificate authority whose files live
// in one directory.
type CA struct {
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	dir      string
	certFile string
}

// New creates a CA and writes its certificate to dir/ca.pem, creating dir
// if needed. Its serial number is 1.
func New(dir string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pemca: CA directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pemca: CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "trellis test CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(Validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pemca: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pemca: parse the CA certificate: %w", err)
	}
	certFile := filepath.Join(dir, caFileName)
	if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return nil, fmt.Errorf("pemca: CA certificate: %w", err)
	}
	return &CA{cert: cert, key: key, dir: dir, certFile: certFile}, nil
}

// CertFile returns the path of the CA certificate's PEM file.
func (ca *CA) CertFile() string { return ca.certFile }

// Cert returns the CA certificate.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// Pool returns a new certificate pool holding the CA certificate alone.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool
}

// Issue writes a leaf certificate and its ECDSA P-256 key for name to
// dir/name.pem and dir/name-key.pem and returns their paths. The leaf
// serves both servers and clients (server and client authentication); its
// SANs are the DNS names name and localhost and the IP addresses 127.0.0.1
// and ::1, so that a server on a loopback address verifies whichever way a
// client names it. serial is its serial number: positive, and distinct
// from the CA's (1) and from the other leaves'.
func (ca *CA) Issue(name string, serial int64) (certPath, keyPath string, err error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." || name+".pem" == caFileName {
		return "", "", fmt.Errorf("pemca: leaf name %q: accepted: a file name (no path separators) other than %q, whose file is the CA's", name, strings.TrimSuffix(caFileName, ".pem"))
	}
	if serial < 1 {
		return "", "", fmt.Errorf("pemca: leaf %q: serial number %d: accepted: 1 or more", name, serial)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("pemca: leaf %q key: %w", name, err)
	}
	dnsNames := []string{name}
	if name != "localhost" {
		dnsNames = append(dnsNames, "localhost")
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     dnsNames,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return "", "", fmt.Errorf("pemca: leaf %q certificate: %w", name, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", fmt.Errorf("pemca: leaf %q key: %w", name, err)
	}
	certPath = filepath.Join(ca.dir, name+".pem")
	keyPath = filepath.Join(ca.dir, name+"-key.pem")
	if err := errors.Join(
		writePEM(certPath, "CERTIFICATE", der, 0o644),
		writePEM(keyPath, "EC PRIVATE KEY", keyDER, 0o600),
	); err != nil {
		return "", "", fmt.Errorf("pemca: leaf %q: %w", name, err)
	}
	return certPath, keyPath, nil
}

// writePEM writes one PEM block of type blockType to path.
func writePEM(path, blockType string, der []byte, perm os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
	// The error names path.
	return os.WriteFile(path, data, perm)
}
