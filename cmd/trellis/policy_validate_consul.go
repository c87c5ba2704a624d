package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/consulconfig"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// consulValidateTimeout bounds the reads of `policy validate --consul`.
const consulValidateTimeout = 30 * time.Second

// validateConsulEntries reads the config entries and chains of the Consul
// at CONSUL_HTTP_ADDR, merges them with the given Trellis policies as the
// server does, and prints what the server would serve from them and every
// field it would not send. It returns the number of problems printed.
func validateConsulEntries(ctx context.Context, out io.Writer, trellis map[string]*policyv1.ServicePolicy) (int, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, consulValidateTimeout)
	defer cancel()
	client, err := consulapi.NewClient(consulapi.DefaultConfig())
	if err != nil {
		return 0, fmt.Errorf("Consul client: %w", err)
	}
	snap, err := consulconfig.Read(ctx, client)
	if err != nil {
		return 0, err
	}
	m := consulconfig.Merge(trellis, snap.Converted, nil)
	for _, u := range m.Unsupported {
		fmt.Fprintf(out, "consul: %s\n", u)
	}
	if len(m.FromChains) > 0 {
		fmt.Fprintf(out, "consul: policies from config entries: %s\n", strings.Join(m.FromChains, ", "))
	}
	for _, svc := range m.Overridden {
		fmt.Fprintf(out, "consul: the config entries of %s are overridden by its policy in the input\n", svc)
	}
	if len(m.Unsupported) == 0 {
		fmt.Fprintf(out, "consul: %d services with config entries, every field served\n", len(snap.Chains))
	}
	return len(m.Unsupported), nil
}
