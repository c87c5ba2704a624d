package policyapi

import (
	"context"
	"fmt"
	"strconv"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"

	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// grpc-go decodes a request before any handler or interceptor runs and
// answers Internal when that fails, which is what a proto3 string field
// holding invalid UTF-8 does. The service is therefore registered with
// handlers that take the request as raw bytes (an emptypb.Empty keeps every
// field as unknown bytes, without checking them) and decode it themselves,
// after the interceptors authenticated the call: a request that does not
// decode is InvalidArgument, naming the field that is not UTF-8.

// serviceDesc is policyv1.PolicyService_ServiceDesc with such handlers.
var serviceDesc = func() grpc.ServiceDesc {
	d := policyv1.PolicyService_ServiceDesc
	d.Methods = []grpc.MethodDesc{
		{MethodName: "PutPolicy", Handler: rawHandler(policyv1.PolicyService_PutPolicy_FullMethodName,
			func(s policyv1.PolicyServiceServer, ctx context.Context, req *policyv1.PutPolicyRequest) (any, error) {
				return s.PutPolicy(ctx, req)
			})},
		{MethodName: "GetPolicy", Handler: rawHandler(policyv1.PolicyService_GetPolicy_FullMethodName,
			func(s policyv1.PolicyServiceServer, ctx context.Context, req *policyv1.GetPolicyRequest) (any, error) {
				return s.GetPolicy(ctx, req)
			})},
		{MethodName: "ListPolicies", Handler: rawHandler(policyv1.PolicyService_ListPolicies_FullMethodName,
			func(s policyv1.PolicyServiceServer, ctx context.Context, req *policyv1.ListPoliciesRequest) (any, error) {
				return s.ListPolicies(ctx, req)
			})},
		{MethodName: "DeletePolicy", Handler: rawHandler(policyv1.PolicyService_DeletePolicy_FullMethodName,
			func(s policyv1.PolicyServiceServer, ctx context.Context, req *policyv1.DeletePolicyRequest) (any, error) {
				return s.DeletePolicy(ctx, req)
			})},
		{MethodName: "ValidatePolicy", Handler: rawHandler(policyv1.PolicyService_ValidatePolicy_FullMethodName,
			func(s policyv1.PolicyServiceServer, ctx context.Context, req *policyv1.ValidatePolicyRequest) (any, error) {
				return s.ValidatePolicy(ctx, req)
			})},
	}
	return d
}()

// rawHandler is a unary handler that decodes the request itself.
func rawHandler[Req any, PReq interface {
	*Req
	proto.Message
}](fullMethod string, call func(policyv1.PolicyServiceServer, context.Context, PReq) (any, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		raw := &emptypb.Empty{}
		if err := dec(raw); err != nil {
			return nil, err
		}
		in := PReq(new(Req))
		decodeErr := decodeRequest(raw.ProtoReflect().GetUnknown(), in)
		handler := func(ctx context.Context, req any) (any, error) {
			if decodeErr != nil {
				return nil, decodeErr
			}
			return call(srv.(policyv1.PolicyServiceServer), ctx, req.(PReq))
		}
		if interceptor == nil {
			return handler(ctx, in)
		}
		return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: fullMethod}, handler)
	}
}

// decodeRequest unmarshals b into m. A string that is not UTF-8 is
// InvalidArgument naming its field; any other failure is InvalidArgument
// too.
func decodeRequest(b []byte, m proto.Message) error {
	err := proto.Unmarshal(b, m)
	if err == nil {
		return nil
	}
	proto.Reset(m)
	if field := invalidUTF8Field(b, m.ProtoReflect().Descriptor(), ""); field != "" {
		return status.Errorf(codes.InvalidArgument, "%s: not valid UTF-8: strings must be UTF-8 text", field)
	}
	return status.Errorf(codes.InvalidArgument, "the request cannot be decoded: %v", err)
}

// invalidUTF8Field returns the path (.proto field names, from the request)
// of the first string field of the message encoded in b that is not UTF-8,
// or "" when there is none or b cannot be walked.
func invalidUTF8Field(b []byte, md protoreflect.MessageDescriptor, path string) string {
	counts := map[protowire.Number]int{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return ""
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil {
			continue
		}
		name := string(fd.Name())
		if path != "" {
			name = path + "." + name
		}
		if fd.IsList() {
			name += "[" + strconv.Itoa(counts[num]) + "]"
			counts[num]++
		}
		switch {
		case fd.IsMap():
			if f := invalidUTF8Field(v, fd.Message(), name); f != "" {
				return mapField(f, name)
			}
		case fd.Kind() == protoreflect.StringKind:
			if !utf8.Valid(v) {
				return name
			}
		case fd.Kind() == protoreflect.MessageKind:
			if f := invalidUTF8Field(v, fd.Message(), name); f != "" {
				return f
			}
		}
	}
	return ""
}

// mapField names a map entry's key or value field by the map field.
func mapField(entryField, mapName string) string {
	switch entryField {
	case mapName + ".key":
		return fmt.Sprintf("%s (a key)", mapName)
	case mapName + ".value":
		return fmt.Sprintf("%s (a value)", mapName)
	}
	return mapName
}
