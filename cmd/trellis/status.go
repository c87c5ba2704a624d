package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
)

// statusTypes are the table's columns, in xDS order.
var statusTypes = []struct{ url, column string }{
	{resource.ListenerType, "LDS"},
	{resource.RouteType, "RDS"},
	{resource.ClusterType, "CDS"},
	{resource.EndpointType, "EDS"},
}

func newStatusCommand() *cobra.Command {
	var (
		opts       policyClientOptions
		output     string
		service    string
		state      string
		staleAfter time.Duration
		csds       string
	)
	cmd := &cobra.Command{
		Use:   "status [CLIENT]",
		Short: "Show what every connected xDS client was sent and whether it accepted it",
		Long: `status lists the xDS clients connected to a trellis server, one row per
ADS stream, with the state of each resource type: SYNCED (the last response
was ACKed and is what the server serves now), STALE (sent but neither ACKed
nor NACKed for longer than --stale-after, or differing from what the server
serves now) or NACKED (rejected by the client). With CLIENT (a node id or a
stream id) it shows that client in full: subscribed resources, every recent
NACK with its text, and the resources that differ from what is served now.

With --csds ADDR it reads instead what one gRPC process holds, from its own
CSDS (the admin services of grpc/admin, served at ADDR), and compares every
resource with what the trellis server serves that client now: SAME, DIFFERS
(the client holds other content, or a resource no longer served), MISSING
(the client holds nothing for it) or NACKED (the client rejected the last
version, with its error).

It calls the status API on the admin listener, authenticated like the policy
API.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "" && output != "json" && output != "yaml" {
				return fmt.Errorf("-o %q: must be json or yaml (default: a table)", output)
			}
			if csds != "" {
				if len(args) == 1 || service != "" || state != "" {
					return fmt.Errorf("--csds %s reads one process's own xDS clients; CLIENT, --service and --state do not apply with it", csds)
				}
				return runCSDS(cmd, &opts, csds, output)
			}
			if staleAfter <= 0 {
				return fmt.Errorf("--stale-after %s: must be positive", staleAfter)
			}
			want, err := parseSyncState(state)
			if err != nil {
				return err
			}
			if len(args) == 1 && (service != "" || want != statusv1.SyncState_SYNC_STATE_UNSPECIFIED) {
				return fmt.Errorf("--service and --state select clients in the list; they do not apply with CLIENT %q", args[0])
			}
			api, err := opts.dial(cmd)
			if err != nil {
				return err
			}
			defer api.Close()
			ctx, cancel := api.context(cmd.Context())
			defer cancel()
			client := statusv1.NewStatusServiceClient(api.conn)
			stale := durationpb.New(staleAfter)
			if len(args) == 1 {
				resp, err := client.GetClient(ctx, &statusv1.GetClientRequest{Client: args[0], StaleAfter: stale})
				if err != nil {
					return api.explain("status "+args[0], err)
				}
				if output != "" {
					return printProto(cmd.OutOrStdout(), resp, output)
				}
				return printClientDetail(cmd.OutOrStdout(), resp)
			}
			all := &statusv1.ListClientsResponse{}
			req := &statusv1.ListClientsRequest{Service: service, State: want, PageSize: statusapi.MaxPageSize, StaleAfter: stale}
			for {
				resp, err := client.ListClients(ctx, req)
				if err != nil {
					return api.explain("status", err)
				}
				all.Clients = append(all.Clients, resp.GetClients()...)
				all.Summary, all.Replica = resp.GetSummary(), resp.GetReplica()
				if resp.GetNextPageToken() == "" {
					break
				}
				req.PageToken = resp.GetNextPageToken()
			}
			if output != "" {
				return printProto(cmd.OutOrStdout(), all, output)
			}
			return printClientTable(cmd.OutOrStdout(), all)
		},
	}
	addPolicyClientFlags(cmd, &opts)
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "", "output format: json or yaml (default: a table)")
	f.StringVar(&service, "service", "", "only the clients subscribed to this service's resources")
	f.StringVar(&state, "state", "", "only the clients in this state: synced, stale or nacked")
	f.DurationVar(&staleAfter, "stale-after", statusapi.DefaultStaleAfter, "how long a response may stay unanswered before it counts as STALE")
	f.StringVar(&csds, "csds", "", "admin address (host:port) of a gRPC process serving grpc/admin: compare what its xDS clients hold (CSDS) with what the server serves them")
	return cmd
}

func parseSyncState(s string) (statusv1.SyncState, error) {
	switch strings.ToLower(s) {
	case "":
		return statusv1.SyncState_SYNC_STATE_UNSPECIFIED, nil
	case "synced":
		return statusv1.SyncState_SYNC_STATE_SYNCED, nil
	case "stale":
		return statusv1.SyncState_SYNC_STATE_STALE, nil
	case "nacked":
		return statusv1.SyncState_SYNC_STATE_NACKED, nil
	}
	return 0, fmt.Errorf("--state %q: must be synced, stale or nacked", s)
}

// stateWord is a state as the table shows it.
func stateWord(s statusv1.SyncState) string {
	switch s {
	case statusv1.SyncState_SYNC_STATE_SYNCED:
		return "SYNCED"
	case statusv1.SyncState_SYNC_STATE_STALE:
		return "STALE"
	case statusv1.SyncState_SYNC_STATE_NACKED:
		return "NACKED"
	}
	return "-"
}

func printProto(w io.Writer, m proto.Message, format string) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return fmt.Errorf("encode status as YAML: %w", err)
		}
	} else {
		b = append(b, '\n')
	}
	_, err = w.Write(b)
	return err
}

func printClientTable(w io.Writer, resp *statusv1.ListClientsResponse) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tSTREAM\tUSER AGENT\tPROFILE\tLDS\tRDS\tCDS\tEDS\tCONNECTED\tREPLICA")
	for _, c := range resp.GetClients() {
		byType := make(map[string]*statusv1.TypeStatus, len(c.GetTypes()))
		for _, t := range c.GetTypes() {
			byType[t.GetTypeUrl()] = t
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s", orDash(c.GetNodeId()), c.GetStreamId(), orDash(c.GetUserAgent()), orDash(c.GetProfile()))
		for _, st := range statusTypes {
			word := "-"
			if t, ok := byType[st.url]; ok {
				word = stateWord(t.GetState())
			}
			fmt.Fprintf(tw, "\t%s", word)
		}
		fmt.Fprintf(tw, "\t%s\t%s\n", c.GetConnectedAt().AsTime().UTC().Format(time.RFC3339), c.GetReplica())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	s := resp.GetSummary()
	_, err := fmt.Fprintf(w, "%d clients: %d synced, %d stale, %d nacked\n", s.GetClients(), s.GetSynced(), s.GetStale(), s.GetNacked())
	return err
}

func printClientDetail(w io.Writer, resp *statusv1.GetClientResponse) error {
	var b strings.Builder
	for i, c := range resp.GetClients() {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "Client:      %s\n", orDash(c.GetNodeId()))
		fmt.Fprintf(&b, "Stream:      %d on %s\n", c.GetStreamId(), c.GetReplica())
		fmt.Fprintf(&b, "State:       %s\n", stateWord(c.GetState()))
		fmt.Fprintf(&b, "User agent:  %s (profile %s)\n", orDash(c.GetUserAgent()), orDash(c.GetProfile()))
		fmt.Fprintf(&b, "Peer:        %s\n", orDash(c.GetPeer()))
		if id := c.GetSpiffeId(); id != "" {
			fmt.Fprintf(&b, "SPIFFE ID:   %s\n", id)
		}
		if l := c.GetLocality(); l != nil {
			fmt.Fprintf(&b, "Locality:    region=%s zone=%s sub_zone=%s\n", l.GetRegion(), l.GetZone(), l.GetSubZone())
		}
		fmt.Fprintf(&b, "Connected:   %s\n", c.GetConnectedAt().AsTime().UTC().Format(time.RFC3339))
		for _, t := range c.GetTypes() {
			fmt.Fprintf(&b, "\n%s: %s\n", t.GetTypeUrl(), stateWord(t.GetState()))
			if r := t.GetReason(); r != "" {
				fmt.Fprintf(&b, "  why:       %s\n", r)
			}
			fmt.Fprintf(&b, "  resources: %s\n", orDash(strings.Join(t.GetResourceNames(), ", ")))
			fmt.Fprintf(&b, "  sent:      %s", orDash(t.GetSentVersion()))
			if t.GetSentAt() != nil {
				fmt.Fprintf(&b, " at %s", t.GetSentAt().AsTime().UTC().Format(time.RFC3339))
			}
			if t.GetPending() {
				b.WriteString(" (not answered yet)")
			}
			fmt.Fprintf(&b, "\n  acked:     %s (%d ACKs, %d NACKs)\n", orDash(t.GetAckedVersion()), t.GetAcks(), t.GetNacks())
			for _, n := range t.GetNackHistory() {
				fmt.Fprintf(&b, "  NACK of %s at %s: %s\n", n.GetVersion(), n.GetAt().AsTime().UTC().Format(time.RFC3339), n.GetError())
			}
			for _, d := range t.GetOutOfDate() {
				switch {
				case d.GetCurrentContentVersion() == "":
					fmt.Fprintf(&b, "  differs:   %s is no longer served (sent content %s)\n", d.GetName(), d.GetSentContentVersion())
				case d.GetSentContentVersion() == "":
					fmt.Fprintf(&b, "  differs:   %s is served now (content %s) but was not when last sent\n", d.GetName(), d.GetCurrentContentVersion())
				default:
					fmt.Fprintf(&b, "  differs:   %s: sent content %s, served now %s\n", d.GetName(), d.GetSentContentVersion(), d.GetCurrentContentVersion())
				}
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
