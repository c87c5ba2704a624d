package dataplane

import (
	"context"

	"google.golang.org/grpc"

	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// The benchmark calls trellis.echo.v1.Echo/Echo for unary calls, and a
// bidirectional stream of the same messages, trellis.bench.v1.Bench/PingPong,
// declared here by hand (it needs no generated code beyond the messages).
const (
	streamService = "trellis.bench.v1.Bench"
	streamMethod  = "PingPong"
	streamPath    = "/" + streamService + "/" + streamMethod
)

// echoService answers every call with the request's message.
type echoService struct {
	echov1.UnimplementedEchoServer
}

func (echoService) Echo(_ context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

// pingPong answers every message of the stream with one message, until
// the caller closes its side.
func pingPong(_ any, stream grpc.ServerStream) error {
	for {
		req := new(echov1.EchoRequest)
		if err := stream.RecvMsg(req); err != nil {
			return nil // io.EOF or the caller went away: the stream is over.
		}
		if err := stream.SendMsg(&echov1.EchoResponse{Message: req.GetMessage()}); err != nil {
			return err
		}
	}
}

// streamServiceDesc describes the stream service for grpc.Server.
var streamServiceDesc = grpc.ServiceDesc{
	ServiceName: streamService,
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    streamMethod,
		Handler:       pingPong,
		ServerStreams: true,
		ClientStreams: true,
	}},
}

// registerServices adds the echo and stream services to s.
func registerServices(s grpc.ServiceRegistrar) {
	echov1.RegisterEchoServer(s, echoService{})
	s.RegisterService(&streamServiceDesc, struct{}{})
}
