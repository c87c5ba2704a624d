package main

import (
	"context"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// echoServer implements trellis.echo.v1.Echo.
type echoServer struct {
	echov1.UnimplementedEchoServer
	instanceID string
	service    string
}

// Echo returns the request's message with this instance's identity and the
// caller's, when the connection carries one.
func (s *echoServer) Echo(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	return &echov1.EchoResponse{
		Message:      req.GetMessage(),
		InstanceId:   s.instanceID,
		Service:      s.service,
		PeerIdentity: peerIdentity(ctx),
	}, nil
}

// Reverse returns the request's message reversed, with the same identities
// as Echo.
func (s *echoServer) Reverse(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	resp, err := s.Echo(ctx, req)
	if err != nil {
		return nil, err
	}
	runes := []rune(resp.Message)
	for i, j := 0, len(runes)-1; i < j; i, j = i+1, j-1 {
		runes[i], runes[j] = runes[j], runes[i]
	}
	resp.Message = string(runes)
	return resp, nil
}

// peerIdentity returns the caller's SPIFFE ID when the call came over mTLS
// with a SPIFFE certificate, else its first URI SAN, else "".
func peerIdentity(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return ""
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return ""
	}
	if info.SPIFFEID != nil {
		return info.SPIFFEID.String()
	}
	if len(info.State.PeerCertificates) > 0 {
		if uris := info.State.PeerCertificates[0].URIs; len(uris) > 0 {
			return uris[0].String()
		}
	}
	return ""
}
