package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	csdsv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/internal/clients"
	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
)

// Results of comparing one resource a client holds with what Trellis
// serves.
const (
	// csdsSame: the client holds exactly what Trellis serves.
	csdsSame = "SAME"
	// csdsDiffers: the client holds other content than Trellis serves, or
	// holds a resource Trellis no longer serves.
	csdsDiffers = "DIFFERS"
	// csdsMissing: the client holds nothing for the resource (requested,
	// or reported as not existing).
	csdsMissing = "MISSING"
	// csdsNacked: the client rejected the last version it was sent.
	csdsNacked = "NACKED"
)

// csdsReport is the output of `trellis status --csds`.
type csdsReport struct {
	// Admin is the client's admin address that was read.
	Admin string `json:"admin"`
	// Replica is the trellis server the resources were compared with.
	Replica string         `json:"replica"`
	Clients []csdsClient   `json:"clients"`
	Summary map[string]int `json:"summary"`
}

// csdsClient is one xDS client of the process (one per channel target, and
// one for xDS-enabled servers).
type csdsClient struct {
	// Scope is the client's CSDS client_scope: the channel target, or
	// "#server" for xDS-enabled servers.
	Scope     string `json:"scope"`
	NodeID    string `json:"node_id"`
	UserAgent string `json:"user_agent,omitempty"`
	// Profile is the client profile Trellis serves the node, and
	// ProfileSource how it was chosen ("stream", "user agent", "fallback").
	Profile       string         `json:"profile"`
	ProfileSource string         `json:"profile_source"`
	Resources     []csdsResource `json:"resources"`
}

// csdsResource is one resource: what the client holds against what Trellis
// serves.
type csdsResource struct {
	Type    string `json:"type"`
	TypeURL string `json:"type_url"`
	Name    string `json:"name"`
	// ClientVersion is the version of the response the client took it
	// from; ClientState is its CSDS status (ACKED, NACKED, REQUESTED,
	// DOES_NOT_EXIST).
	ClientVersion string `json:"client_version,omitempty"`
	ClientState   string `json:"client_state"`
	// ClientError is the client's error for a rejected version.
	ClientError string `json:"client_error,omitempty"`
	// TrellisVersion is the content version Trellis serves; empty when it
	// does not serve the resource.
	TrellisVersion string `json:"trellis_version,omitempty"`
	Result         string `json:"result"`
	// Detail says why the result is not SAME.
	Detail string `json:"detail,omitempty"`
}

// runCSDS reads the CSDS of the gRPC process at admin and compares every
// resource it holds with what the trellis server serves that client now.
func runCSDS(cmd *cobra.Command, opts *policyClientOptions, admin, output string) error {
	api, err := opts.dial(cmd)
	if err != nil {
		return err
	}
	defer api.Close()
	ctx, cancel := api.context(cmd.Context())
	defer cancel()
	dump, err := fetchCSDS(ctx, admin)
	if err != nil {
		return err
	}
	report, err := compareCSDS(ctx, statusv1.NewStatusServiceClient(api.conn), dump)
	if err != nil {
		return api.explain("status --csds", err)
	}
	report.Admin = admin
	if output != "" {
		return printJSONOrYAML(cmd.OutOrStdout(), report, output)
	}
	return printCSDS(cmd.OutOrStdout(), report)
}

// fetchCSDS reads a process's CSDS (grpc/admin's
// envoy.service.status.v3.ClientStatusDiscoveryService) in plaintext, as
// admin endpoints are served on loopback.
func fetchCSDS(ctx context.Context, admin string) (*csdsv3.ClientStatusResponse, error) {
	conn, err := grpc.NewClient(admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("--csds %q: %w", admin, err)
	}
	defer conn.Close()
	resp, err := csdsv3.NewClientStatusDiscoveryServiceClient(conn).FetchClientStatus(ctx, &csdsv3.ClientStatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("--csds %s: read the client's CSDS (does the process register grpc/admin, with grpc/xds imported?): %w", admin, err)
	}
	return resp, nil
}

// compareCSDS compares what each xDS client of dump holds with what the
// status API says Trellis serves it.
func compareCSDS(ctx context.Context, api statusv1.StatusServiceClient, dump *csdsv3.ClientStatusResponse) (*csdsReport, error) {
	report := &csdsReport{Clients: []csdsClient{}, Summary: map[string]int{csdsSame: 0, csdsDiffers: 0, csdsMissing: 0, csdsNacked: 0}}
	for _, cfg := range dump.GetConfig() {
		node := cfg.GetNode()
		c := csdsClient{Scope: cfg.GetClientScope(), NodeID: node.GetId(), UserAgent: clients.FromNode(node).String(), Resources: []csdsResource{}}
		held := slices.Clone(cfg.GetGenericXdsConfigs())
		slices.SortFunc(held, func(a, b *csdsv3.ClientConfig_GenericXdsConfig) int {
			return cmp.Or(cmp.Compare(typeRank(a.GetTypeUrl()), typeRank(b.GetTypeUrl())), cmp.Compare(a.GetName(), b.GetName()))
		})
		fc := clients.FromNode(node)
		// Only the types Trellis serves are asked about.
		var asked []*csdsv3.ClientConfig_GenericXdsConfig
		var others []csdsResource
		for _, h := range held {
			if typeRank(h.GetTypeUrl()) < len(statusTypes) {
				asked = append(asked, h)
				continue
			}
			report.Summary[csdsMissing]++
			others = append(others, csdsResource{Type: h.GetTypeUrl(), TypeURL: h.GetTypeUrl(), Name: h.GetName(),
				ClientVersion: h.GetVersionInfo(), ClientState: h.GetClientStatus().String(), Result: csdsMissing,
				Detail: "not a resource type Trellis serves"})
		}
		held = asked
		for start := 0; start < len(held); start += statusapi.MaxResources {
			chunk := held[start:min(start+statusapi.MaxResources, len(held))]
			req := &statusv1.GetResourcesRequest{NodeId: node.GetId(), UserAgentName: fc.Name, UserAgentVersion: fc.Version, RbacDeclared: fc.RBACDeclared, OwnTrustDomainRootsDeclared: fc.OwnTrustDomainRootsDeclared}
			for _, h := range chunk {
				req.Resources = append(req.Resources, &statusv1.ResourceRef{TypeUrl: h.GetTypeUrl(), Name: h.GetName()})
			}
			resp, err := api.GetResources(ctx, req)
			if err != nil {
				return nil, err
			}
			if len(resp.GetResources()) != len(chunk) {
				return nil, fmt.Errorf("status API answered %d resources for %d asked", len(resp.GetResources()), len(chunk))
			}
			report.Replica, c.Profile, c.ProfileSource = resp.GetReplica(), resp.GetProfile(), resp.GetProfileSource()
			for i, h := range chunk {
				r := compareResource(h, resp.GetResources()[i])
				report.Summary[r.Result]++
				c.Resources = append(c.Resources, r)
			}
		}
		c.Resources = append(c.Resources, others...)
		report.Clients = append(report.Clients, c)
	}
	slices.SortFunc(report.Clients, func(a, b csdsClient) int { return cmp.Compare(a.Scope, b.Scope) })
	return report, nil
}

func typeRank(typeURL string) int {
	for i, t := range statusTypes {
		if t.url == typeURL {
			return i
		}
	}
	return len(statusTypes)
}

func typeColumn(typeURL string) string {
	for _, t := range statusTypes {
		if t.url == typeURL {
			return t.column
		}
	}
	return typeURL
}

// compareResource judges one resource the client holds against what
// Trellis serves.
func compareResource(h *csdsv3.ClientConfig_GenericXdsConfig, served *statusv1.ServedResource) csdsResource {
	r := csdsResource{
		Type: typeColumn(h.GetTypeUrl()), TypeURL: h.GetTypeUrl(), Name: h.GetName(),
		ClientVersion: h.GetVersionInfo(), ClientState: h.GetClientStatus().String(),
		TrellisVersion: served.GetContentVersion(),
	}
	if es := h.GetErrorState(); es != nil {
		r.ClientError = es.GetDetails()
	}
	holds := h.GetXdsConfig() != nil && len(h.GetXdsConfig().GetValue()) > 0
	switch {
	case h.GetClientStatus() == adminv3.ClientResourceStatus_NACKED:
		r.Result = csdsNacked
		r.Detail = fmt.Sprintf("the client rejected version %s: %s", h.GetErrorState().GetVersionInfo(), r.ClientError)
		if holds {
			r.Detail += "; it keeps the version it had before"
		}
	case !holds && served.GetServed():
		r.Result = csdsMissing
		r.Detail = "Trellis serves it, the client does not hold it"
		if h.GetClientStatus() == adminv3.ClientResourceStatus_DOES_NOT_EXIST {
			r.Detail = "the client was told it does not exist, but Trellis serves it now"
		}
	case !holds:
		r.Result = csdsMissing
		r.Detail = "Trellis does not serve it"
		if h.GetTypeUrl() == resource.ListenerType {
			r.Detail += ": the channel fails with \"listener resource does not exist\" (see trellis explain)"
		}
	case !served.GetServed():
		r.Result = csdsDiffers
		r.Detail = "the client holds a resource Trellis no longer serves"
	default:
		same, err := sameContent(h.GetXdsConfig(), served.GetResource())
		switch {
		case err != nil:
			r.Result, r.Detail = csdsDiffers, err.Error()
		case same:
			r.Result = csdsSame
		default:
			r.Result = csdsDiffers
			r.Detail = "the client holds other content than Trellis serves now"
		}
	}
	return r
}

// sameContent compares two resources by content.
func sameContent(held, served *anypb.Any) (bool, error) {
	a, err := held.UnmarshalNew()
	if err != nil {
		return false, fmt.Errorf("decode the client's %s: %w", held.GetTypeUrl(), err)
	}
	b, err := served.UnmarshalNew()
	if err != nil {
		return false, fmt.Errorf("decode Trellis's %s: %w", served.GetTypeUrl(), err)
	}
	return proto.Equal(a, b), nil
}

func printJSONOrYAML(w io.Writer, v any, format string) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return fmt.Errorf("encode as YAML: %w", err)
		}
	} else {
		b = append(b, '\n')
	}
	_, err = w.Write(b)
	return err
}

func printCSDS(w io.Writer, report *csdsReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "CSDS of %s compared with trellis server %s\n", report.Admin, orDash(report.Replica))
	if len(report.Clients) == 0 {
		b.WriteString("\nThe process has no xDS client: it has not dialled an xds:/// target or started an xDS server yet.\n")
	}
	var notes []string
	for _, c := range report.Clients {
		fmt.Fprintf(&b, "\n%s  node %s, %s, profile %s (from %s)\n", c.Scope, orDash(c.NodeID), orDash(c.UserAgent), orDash(c.Profile), orDash(c.ProfileSource))
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TYPE\tNAME\tCLIENT VERSION\tCLIENT STATE\tTRELLIS VERSION\tRESULT")
		for _, r := range c.Resources {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Type, r.Name, orDash(r.ClientVersion), r.ClientState, orDash(r.TrellisVersion), r.Result)
			if r.Detail != "" {
				notes = append(notes, fmt.Sprintf("%s %s %s: %s", c.Scope, r.Type, r.Name, r.Detail))
			}
		}
		tw.Flush()
	}
	if len(notes) > 0 {
		b.WriteString("\n")
		for _, n := range notes {
			b.WriteString(n + "\n")
		}
	}
	s := report.Summary
	fmt.Fprintf(&b, "\n%d same, %d differ, %d missing, %d nacked\n", s[csdsSame], s[csdsDiffers], s[csdsMissing], s[csdsNacked])
	_, err := io.WriteString(w, b.String())
	return err
}
