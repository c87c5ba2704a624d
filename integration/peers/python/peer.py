"""A gRPC C-core (Python) peer for the Trellis integration tests.

  python3 peer.py client   reads one JSON command per line on stdin
                           ({"target", "calls", "method", "metadata",
                           "timeout_ms", "creds"}), makes the calls on one
                           long-lived channel per target and writes one JSON
                           result per line on stdout ({"by_instance",
                           "codes", "errors", "peer_identities"}).
  python3 peer.py server   serves trellis.echo.v1.Echo as an xDS-enabled
                           server on PORT with INSTANCE_ID, with xDS server
                           credentials when CREDS=xds; writes
                           {"serving": port} once started.

GRPC_XDS_BOOTSTRAP names the bootstrap (trellis bootstrap --for cpp). The
Echo messages are encoded by hand (three string fields), so the peer needs
only Debian's python3-grpcio.
"""

import json
import os
import signal
import sys
import threading

import grpc
import grpc.experimental


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_request(message):
    data = message.encode()
    return b"\x0a" + _varint(len(data)) + data


def decode_strings(buf):
    """Decodes a message of string fields into {field number: str}."""
    fields, i = {}, 0
    while i < len(buf):
        key, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        num, wire = key >> 3, key & 7
        if wire != 2:
            raise ValueError("unexpected wire type %d" % wire)
        length, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields[num] = buf[i:i + length].decode()
        i += length
    return fields


def encode_response(message, instance, service):
    out = b""
    for num, value in ((1, message), (2, instance), (3, service)):
        data = value.encode()
        if data:
            out += bytes([num << 3 | 2]) + _varint(len(data)) + data
    return out


_channels = {}


def channel_for(target, creds):
    key = (target, creds or "insecure")
    if key not in _channels:
        if creds == "xds":
            fallback = grpc.experimental.insecure_channel_credentials()
            _channels[key] = grpc.secure_channel(target, grpc.xds_channel_credentials(fallback))
        else:
            _channels[key] = grpc.insecure_channel(target)
    return _channels[key]


def run_command(cmd):
    ch = channel_for(cmd["target"], cmd.get("creds"))
    method = "Reverse" if cmd.get("method") == "Reverse" else "Echo"
    call = ch.unary_unary("/trellis.echo.v1.Echo/" + method)
    md = list((cmd.get("metadata") or {}).items())
    timeout = (cmd.get("timeout_ms") or 10000) / 1000.0
    out = {"by_instance": {}, "codes": {}, "errors": [], "peer_identities": {}}
    for _ in range(cmd.get("calls") or 1):
        try:
            resp = decode_strings(call(encode_request("peer"), timeout=timeout, metadata=md))
            code = "OK"
            inst = resp.get(2, "")
            out["by_instance"][inst] = out["by_instance"].get(inst, 0) + 1
            if resp.get(4):
                out["peer_identities"][resp[4]] = True
        except grpc.RpcError as e:
            code = e.code().name
            if len(out["errors"]) < 5:
                out["errors"].append("%s: %s" % (code, e.details()))
        out["codes"][code] = out["codes"].get(code, 0) + 1
    return out


def client():
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            out = run_command(json.loads(line))
        except Exception as e:  # reported to the test, which fails
            out = {"fatal": repr(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def server():
    port = int(os.environ["PORT"])
    instance = os.environ["INSTANCE_ID"]
    service = os.environ.get("SERVICE", "")

    def echo(req, ctx):
        return encode_response(decode_strings(req).get(1, ""), instance, service)

    def reverse(req, ctx):
        return encode_response(decode_strings(req).get(1, "")[::-1], instance, service)

    handler = grpc.method_handlers_generic_handler("trellis.echo.v1.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Reverse": grpc.unary_unary_rpc_method_handler(reverse),
    })
    from concurrent import futures
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler], xds=True)
    if os.environ.get("CREDS") == "xds":
        creds = grpc.xds_server_credentials(grpc.insecure_server_credentials())
        srv.add_secure_port("127.0.0.1:%d" % port, creds)
    else:
        srv.add_insecure_port("127.0.0.1:%d" % port)
    srv.start()
    sys.stdout.write(json.dumps({"serving": port}) + "\n")
    sys.stdout.flush()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    srv.stop(1).wait()


if __name__ == "__main__":
    server() if sys.argv[1:] == ["server"] else client()
